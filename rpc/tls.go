package rpc

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// NewCertificate makes a self-signed Ed25519 certificate for a node, valid
// for ten years. Its ID (IDFromCertificate) is what peers will know it by;
// keep the key to keep the ID across restarts.
func NewCertificate() (tls.Certificate, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "tether node"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv, Leaf: leaf}, nil
}

// TLSConfig returns a mutual-TLS configuration presenting cert, in which
// peers are known by their keys alone: any well-formed certificate is
// accepted, and the peer's ID is derived from its public key. This is the
// usual set-up for peer-to-peer grids, where there is no certificate
// authority. To use a CA instead, pass a tls.Config with RootCAs and ClientCAs
// set: the chain is then verified as well.
func TLSConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
}

// IDFromCertificate returns the node ID a certificate stands for: the
// SHA-256 of its public key (SubjectPublicKeyInfo), first 20 bytes, in
// lower-case base32 (32 characters). Only the holder of the private key can
// complete a TLS handshake with it, so the ID cannot be claimed by another.
func IDFromCertificate(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return lower(idEncoding.EncodeToString(sum[:20]))
}

// TLSID returns the node ID that a TLS configuration stands for: that of
// its first certificate.
func TLSID(cfg *tls.Config) (string, error) {
	if len(cfg.Certificates) == 0 || len(cfg.Certificates[0].Certificate) == 0 {
		return "", errors.New("rpc: the TLS config needs Certificates[0]: mutual TLS derives the node ID from it")
	}
	c := cfg.Certificates[0]
	leaf := c.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return "", fmt.Errorf("rpc: parsing the TLS certificate: %w", err)
		}
	}
	return IDFromCertificate(leaf), nil
}

// sideTLS adapts the user's config for one side of a mutual-TLS handshake.
func sideTLS(cfg *tls.Config, server bool) *tls.Config {
	c := cfg.Clone()
	if c.MinVersion < tls.VersionTLS12 {
		c.MinVersion = tls.VersionTLS12
	}
	selfSigned := (server && c.ClientCAs == nil) || (!server && c.RootCAs == nil)
	if server {
		if c.ClientCAs != nil {
			c.ClientAuth = tls.RequireAndVerifyClientCert
		} else {
			c.ClientAuth = tls.RequireAnyClientCert
		}
	} else if selfSigned {
		c.InsecureSkipVerify = true // the key is the identity: checked by verifyKeyCert and ExpectID
	}
	if selfSigned {
		user := c.VerifyPeerCertificate
		c.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
			if err := verifyKeyCert(raw); err != nil {
				return err
			}
			if user != nil {
				return user(raw, chains)
			}
			return nil
		}
	}
	return c
}

// verifyKeyCert checks a certificate that stands for its key alone: present,
// well formed, within its validity period and signed by its own key.
func verifyKeyCert(raw [][]byte) error {
	if len(raw) == 0 {
		return errors.New("rpc: the peer presented no certificate")
	}
	cert, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return fmt.Errorf("rpc: the peer's certificate: %w", err)
	}
	now := time.Now()
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return fmt.Errorf("rpc: the peer's certificate is valid from %v to %v, not now", cert.NotBefore, cert.NotAfter)
	}
	if err := cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
		return fmt.Errorf("rpc: the peer's certificate is not signed by its own key: %w", err)
	}
	return nil
}
