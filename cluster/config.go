package cluster

import (
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/hashicorp/memberlist"
)

// DefaultMaxKept is how many members a node keeps connected by default:
// all of them up to this many, a stable subset of this many beyond.
const DefaultMaxKept = 64

// Config configures Join. Seeds and Secret are what a deployment sets;
// the rest have defaults.
type Config struct {
	// Seeds are the gossip addresses ("host:port") of members to join
	// through; one that answers is enough. None starts a new cluster.
	Seeds []string

	// BindAddr is the "host:port" the gossip listens on, UDP and TCP.
	// Port 0 picks a free one (see Cluster.GossipAddr). Default
	// "0.0.0.0:7946".
	BindAddr string

	// Advertise is the tether address other members dial to reach this
	// node. Default: the node's listening address, with an unspecified
	// host ("[::]", "0.0.0.0") replaced by the gossip's advertised IP.
	Advertise string

	// Secret is the cluster's key: 16, 24 or 32 bytes for AES-128, -192 or
	// -256. Every gossip message is encrypted and authenticated with it, so
	// only holders of the key become members, and thereby admitted (see
	// Gate). Required, unless Insecure.
	Secret []byte

	// Insecure runs the gossip without a Secret: anyone who can reach the
	// gossip port can join, and is then admitted. For tests and closed
	// networks.
	Insecure bool

	// MaxKept bounds how many members this node keeps connected (see the
	// package doc, "How many connections"). Default DefaultMaxKept;
	// negative keeps every member, however many.
	MaxKept int

	// Gate, if the node was started with tether.WithAdmission(gate.Admit),
	// is opened by Join to this cluster's members.
	Gate *Gate

	// Memberlist is the base of the gossip's configuration, for its timings
	// (memberlist.DefaultLANConfig, DefaultWANConfig or DefaultLocalConfig,
	// tuned). Join copies it and sets the node's name (its tether ID), the
	// addresses, the secret, the delegates and the logger. Default
	// memberlist.DefaultLANConfig().
	Memberlist *memberlist.Config
}

// ErrConfig matches the errors of a Config Join cannot use.
var ErrConfig = errors.New("cluster: bad config")

// memberlistConfig returns the gossip's configuration for cfg, without its
// name, delegates and logger.
func (cfg *Config) memberlistConfig() (*memberlist.Config, error) {
	var mc memberlist.Config
	if cfg.Memberlist != nil {
		mc = *cfg.Memberlist
	} else {
		mc = *memberlist.DefaultLANConfig()
	}
	bind := cfg.BindAddr
	if bind == "" {
		bind = "0.0.0.0:7946"
	}
	host, port, err := net.SplitHostPort(bind)
	if err != nil {
		return nil, fmt.Errorf("%w: BindAddr %q: %v", ErrConfig, bind, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return nil, fmt.Errorf("%w: BindAddr %q: bad port", ErrConfig, bind)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	mc.BindAddr, mc.BindPort, mc.AdvertisePort = host, p, p
	switch n := len(cfg.Secret); {
	case n == 0 && !cfg.Insecure:
		return nil, fmt.Errorf("%w: no Secret (set Insecure to gossip in the clear)", ErrConfig)
	case n != 0 && n != 16 && n != 24 && n != 32:
		return nil, fmt.Errorf("%w: a Secret of %d bytes; want 16, 24 or 32", ErrConfig, n)
	case n != 0:
		mc.SecretKey = append([]byte(nil), cfg.Secret...)
		mc.Keyring = nil
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	return &mc, nil
}

// maxKept resolves MaxKept: 0 is the default, negative is no bound.
func (cfg *Config) maxKept() int {
	switch {
	case cfg.MaxKept == 0:
		return DefaultMaxKept
	case cfg.MaxKept < 0:
		return int(^uint(0) >> 1)
	}
	return cfg.MaxKept
}
