package perf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// ErrNetworkShape is returned by StartNetwork for a non-positive host or
// account count or a P256Fraction outside [0, 1].
var ErrNetworkShape = errors.New("perf: network needs Hosts >= 1, AccountsPerHost >= 0 and 0 <= P256Fraction <= 1")

// NetworkOptions shapes a synthetic network.
type NetworkOptions struct {
	// Hosts is the number of PDS hosts; AccountsPerHost accounts live on each.
	Hosts           int
	AccountsPerHost int
	// P256Fraction of the accounts get P-256 keys, the rest K-256.
	P256Fraction float64
	// TLS serves every PDS over https/wss with a self-signed certificate;
	// Network.ClientTLS trusts it.
	TLS bool
	// PLCAddr is the PLC listen address; default 127.0.0.1:0.
	PLCAddr string
	// PDS is the template for every host (TLS is set by the TLS field).
	PDS PDSOptions
}

// Network is a PLC directory and a fleet of PDS hosts with accounts.
type Network struct {
	PLC   *PLC
	Hosts []*PDS
	// Accounts lists every account; Accounts[i] started on
	// Hosts[i/AccountsPerHost].
	Accounts []*Account
	// ClientTLS trusts the hosts' certificate when TLS is on, else nil.
	ClientTLS *tls.Config
}

// StartNetwork starts the PLC and the hosts and creates the accounts
// (registered in the PLC). On error everything started is stopped.
func StartNetwork(opts NetworkOptions) (_ *Network, err error) {
	if opts.Hosts < 1 || opts.AccountsPerHost < 0 || opts.P256Fraction < 0 || opts.P256Fraction > 1 {
		return nil, ErrNetworkShape
	}
	n := &Network{}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	if opts.PLCAddr == "" {
		opts.PLCAddr = "127.0.0.1:0"
	}
	if n.PLC, err = StartPLCAddr(opts.PLCAddr); err != nil {
		return nil, err
	}
	hostOpts := opts.PDS
	if opts.TLS {
		server, client, err := SelfSignedTLS()
		if err != nil {
			return nil, err
		}
		hostOpts.TLS = server
		n.ClientTLS = client
	}
	// Spread P-256 accounts evenly: account i is P-256 when the running
	// share of P-256 accounts is below the target fraction.
	p256 := 0
	for h := range opts.Hosts {
		pds, err := StartPDS(hostOpts)
		if err != nil {
			return nil, err
		}
		n.Hosts = append(n.Hosts, pds)
		for j := range opts.AccountsPerHost {
			kt := K256
			i := len(n.Accounts)
			if float64(p256) < opts.P256Fraction*float64(i+1) {
				kt = P256
				p256++
			}
			a, err := NewAccount(kt, fmt.Sprintf("u%d.h%d.test", j, h), n.PLC, pds)
			if err != nil {
				return nil, err
			}
			n.Accounts = append(n.Accounts, a)
		}
	}
	return n, nil
}

// Close stops every host and the PLC.
func (n *Network) Close() {
	for _, h := range n.Hosts {
		h.Close()
	}
	if n.PLC != nil {
		n.PLC.Close()
	}
}

// selfSignedValidity is how long the generated certificate is valid.
const selfSignedValidity = 24 * time.Hour

// SelfSignedTLS makes a P-256 certificate for 127.0.0.1 and localhost and
// returns a server configuration using it and a client configuration that
// trusts it (and only it).
func SelfSignedTLS() (server, client *tls.Config, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := crand.Int(crand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "perf synthetic PDS"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(selfSignedValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}},
		MinVersion:   tls.VersionTLS12,
	}
	client = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return server, client, nil
}
