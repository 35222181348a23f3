package loop

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"syscall"
	"testing"
)

func TestIsPublicAddr(t *testing.T) {
	cases := map[string]bool{
		"8.8.8.8":                true,
		"1.1.1.1":                true,
		"172.32.0.1":             true,
		"100.128.0.1":            true,
		"2606:4700:4700::1111":   true,
		"::ffff:8.8.8.8":         true,
		"0.0.0.0":                false,
		"10.1.2.3":               false,
		"100.64.0.1":             false,
		"127.0.0.1":              false,
		"127.255.255.254":        false,
		"169.254.169.254":        false,
		"172.16.0.1":             false,
		"172.31.255.255":         false,
		"192.0.0.8":              false,
		"192.0.2.1":              false,
		"192.168.1.1":            false,
		"198.18.0.1":             false,
		"198.19.255.255":         false,
		"198.51.100.7":           false,
		"203.0.113.9":            false,
		"224.0.0.1":              false,
		"239.255.255.250":        false,
		"240.0.0.1":              false,
		"255.255.255.255":        false,
		"::1":                    false,
		"::":                     false,
		"fe80::1":                false,
		"fc00::1":                false,
		"fd12:3456::1":           false,
		"ff02::1":                false,
		"2001:db8::1":            false,
		"3fff::1":                false,
		"::ffff:127.0.0.1":       false,
		"::ffff:169.254.169.254": false,
		"64:ff9b::a00:1":         false, // NAT64 of 10.0.0.1: outside 2000::/3
	}
	for s, want := range cases {
		if got := IsPublicAddr(netip.MustParseAddr(s)); got != want {
			t.Errorf("IsPublicAddr(%s) = %v, want %v", s, got, want)
		}
	}
	if IsPublicAddr(netip.Addr{}) {
		t.Error("zero Addr is public")
	}
}

// The Control hook refuses before connect(2): these dials never send a
// packet. Each case would otherwise reach something (a loopback listener,
// the metadata service) or time out.
func TestSafeDialContextRefuses(t *testing.T) {
	// A real listener on 127.0.0.1: an unchecked dial would succeed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var controlled []string
	base := &net.Dialer{Control: func(network, address string, _ syscall.RawConn) error {
		controlled = append(controlled, address)
		return nil
	}}
	dial := SafeDialContext(base)
	for _, addr := range []string{
		ln.Addr().String(), // loopback, and a port that is listening
		"127.0.0.1:443",
		"127.0.0.1:80",
		"10.0.0.1:443",
		"169.254.169.254:80",
		"[::1]:443",
	} {
		conn, err := dial(context.Background(), "tcp", addr)
		if err == nil {
			conn.Close()
			t.Fatalf("dial %s succeeded", addr)
		}
		if !errors.Is(err, ErrForbiddenAddress) {
			t.Fatalf("dial %s: %v, want ErrForbiddenAddress", addr, err)
		}
	}
	if len(controlled) != 0 {
		t.Fatalf("base Control ran for refused addresses: %v", controlled)
	}
}

func TestNewHTTPClient(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok"))
	}))
	defer srv.Close()
	_, err := NewHTTPClient(false, testTimeout).Get(srv.URL)
	if !errors.Is(err, ErrForbiddenAddress) {
		t.Fatalf("safe client to loopback: %v", err)
	}
	resp, err := NewHTTPClient(true, testTimeout).Get(srv.URL)
	if err != nil {
		t.Fatalf("insecure client: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
}
