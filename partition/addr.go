package partition

import (
	"fmt"
	"net"
	"strconv"
)

// Addr is the address of a listener or connection end on a Network: a host
// name and a port. Its Network is "mem" and its String is "host:port".
type Addr struct {
	Host string
	Port int
}

// Network returns "mem".
func (a Addr) Network() string { return "mem" }

// String returns "host:port".
func (a Addr) String() string { return net.JoinHostPort(a.Host, strconv.Itoa(a.Port)) }

// parseAddr reads "host:port", ":port" or, when bare is true, "port". An
// empty host means self. Port 0 is allowed; callers check the range they need.
func parseAddr(s, self string, bare bool) (Addr, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if !bare {
			return Addr{}, fmt.Errorf("partition: bad address %q: %w", s, err)
		}
		host, port = "", s
	}
	if host == "" {
		host = self
	}
	if port == "" {
		port = "0"
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return Addr{}, fmt.Errorf("partition: bad port in address %q", s)
	}
	return Addr{Host: host, Port: p}, nil
}
