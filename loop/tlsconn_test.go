package loop

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"testing"
	"time"
)

// testCert returns a self-signed server certificate for 127.0.0.1 and
// localhost, and a pool that trusts it.
func testCert(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "loop test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// fakeFeed stands in for the gnet connection: the test appends ciphertext
// to in, in small pieces, and writes go straight to the socket.
type fakeFeed struct {
	in []byte
	w  io.Writer
}

func (f *fakeFeed) InboundBuffered() int { return len(f.in) }
func (f *fakeFeed) Read(p []byte) (int, error) {
	n := copy(p, f.in)
	f.in = f.in[n:]
	return n, nil
}
func (f *fakeFeed) Write(p []byte) (int, error) { return f.w.Write(p) }

// TestTLSSpike proves the non-blocking TLS read scheme loop builds on: a
// tls.Conn whose handshake ran blocking is then fed ciphertext in 1-53 byte
// pieces, and read until its transport reports would-block, often in the
// middle of a record. Several MB must arrive intact, the server's
// post-handshake session tickets must be absorbed, and writes after the
// switch must reach the server, for TLS 1.2 and 1.3.
func TestTLSSpike(t *testing.T) {
	const total = 3 << 20
	cert, pool := testCert(t)
	want := make([]byte, total)
	r := mrand.New(mrand.NewPCG(1, 2))
	for i := range want {
		want[i] = byte(r.UintN(256))
	}
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
				Certificates: []tls.Certificate{cert}, MinVersion: version, MaxVersion: version,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			serverErr := make(chan error, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					serverErr <- err
					return
				}
				defer c.Close()
				// Data right after the handshake, before the client switches.
				if _, err := c.Write([]byte("hello")); err != nil {
					serverErr <- err
					return
				}
				ping := make([]byte, 4)
				if _, err := io.ReadFull(c, ping); err != nil || string(ping) != "ping" {
					serverErr <- err
					return
				}
				// Writes of varying sizes make records of varying sizes.
				rr := mrand.New(mrand.NewPCG(3, 4))
				for off := 0; off < total; {
					n := min(1+int(rr.UintN(40_000)), total-off)
					if _, err := c.Write(want[off : off+n]); err != nil {
						serverErr <- err
						return
					}
					off += n
				}
				done := make([]byte, 4)
				if _, err := io.ReadFull(c, done); err != nil || string(done) != "done" {
					serverErr <- err
					return
				}
				serverErr <- nil
			}()

			raw, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			tr := &tlsTransport{raw: raw}
			tc := tls.Client(tr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
			if err := tc.Handshake(); err != nil {
				t.Fatal(err)
			}
			if got := tc.ConnectionState().Version; got != version {
				t.Fatalf("negotiated %x", got)
			}
			// Let "hello" and the session tickets reach the socket, then
			// switch: from now on the tls.Conn only sees what we feed it.
			time.Sleep(50 * time.Millisecond)
			feed := &fakeFeed{w: raw}
			tr.attach(feed)
			if _, err := tc.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}

			var got []byte
			plain := make([]byte, 16<<10)
			wouldBlockMidRecord := 0
			chunk := make([]byte, 64<<10)
			rr := mrand.New(mrand.NewPCG(5, 6))
			readAll := func() {
				for {
					n, err := tc.Read(plain)
					got = append(got, plain[:n]...)
					if err != nil {
						if !isWouldBlock(err) {
							t.Fatalf("tls read: %v", err)
						}
						return
					}
				}
			}
			for len(got) < total+len("hello") {
				n, err := raw.Read(chunk)
				if err != nil {
					t.Fatalf("raw read after %d plaintext bytes: %v", len(got), err)
				}
				for data := chunk[:n]; len(data) > 0; {
					k := min(1+int(rr.UintN(53)), len(data))
					feed.in = append(feed.in, data[:k]...)
					data = data[k:]
					before := len(got)
					readAll()
					if len(got) == before {
						wouldBlockMidRecord++
					}
				}
			}
			if !bytes.Equal(got[:5], []byte("hello")) || !bytes.Equal(got[5:], want) {
				t.Fatalf("plaintext differs (%d bytes)", len(got))
			}
			if wouldBlockMidRecord < 1000 {
				t.Fatalf("only %d would-block reads mid-record", wouldBlockMidRecord)
			}
			if _, err := tc.Write([]byte("done")); err != nil {
				t.Fatal(err)
			}
			if err := <-serverErr; err != nil {
				t.Fatalf("server: %v", err)
			}
		})
	}
}
