package relay

import (
	"errors"
	"testing"
)

func TestNormalizeHostname(t *testing.T) {
	type want struct {
		host  string
		noSSL bool
		ok    bool
	}
	refused := want{}
	cases := []struct {
		in        string
		prod, dev want // production, insecure hosts allowed
	}{
		// Public DNS names: the same in both modes, TLS by default.
		{in: "pds.example.com", prod: want{"pds.example.com", false, true}, dev: want{"pds.example.com", false, true}},
		{in: "  PDS.Example.COM/ ", prod: want{"pds.example.com", false, true}, dev: want{"pds.example.com", false, true}},
		{in: "https://pds.example.com", prod: want{"pds.example.com", false, true}, dev: want{"pds.example.com", false, true}},
		{in: "wss://pds.example.com/", prod: want{"pds.example.com", false, true}, dev: want{"pds.example.com", false, true}},
		{in: "https://pds.example.com:443", prod: want{"pds.example.com", false, true}, dev: want{"pds.example.com", false, true}},
		{in: "pds.example.com:443", prod: want{"pds.example.com", false, true}, dev: want{"pds.example.com", false, true}},
		{in: "pds.test", prod: want{"pds.test", false, true}, dev: want{"pds.test", false, true}},
		// Plain schemes and ports: development only.
		{in: "http://example.com", prod: refused, dev: want{"example.com", true, true}},
		{in: "ws://example.com:80", prod: refused, dev: want{"example.com", true, true}},
		{in: "http://example.com:8080", prod: refused, dev: want{"example.com:8080", true, true}},
		{in: "pds.example.com:2583", prod: refused, dev: want{"pds.example.com:2583", false, true}},
		// Loopback, private and link-local: refused in production by syntax.
		{in: "localhost", prod: refused, dev: want{"localhost", true, true}},
		{in: "localhost:2583", prod: refused, dev: want{"localhost:2583", true, true}},
		{in: "LOCALHOST:2583", prod: refused, dev: want{"localhost:2583", true, true}},
		{in: "127.0.0.1", prod: refused, dev: want{"127.0.0.1", true, true}},
		{in: "127.0.0.1:2583", prod: refused, dev: want{"127.0.0.1:2583", true, true}},
		{in: "http://127.0.0.1:2583", prod: refused, dev: want{"127.0.0.1:2583", true, true}},
		{in: "https://127.0.0.1:2583", prod: refused, dev: want{"127.0.0.1:2583", false, true}},
		{in: "wss://127.0.0.1:2583/", prod: refused, dev: want{"127.0.0.1:2583", false, true}},
		{in: "https://127.0.0.1:443", prod: refused, dev: want{"127.0.0.1", false, true}},
		{in: "10.0.0.1", prod: refused, dev: want{"10.0.0.1", true, true}},
		{in: "169.254.169.254", prod: refused, dev: want{"169.254.169.254", true, true}},
		{in: "8.8.8.8", prod: refused, dev: want{"8.8.8.8", true, true}},
		{in: "https://8.8.8.8", prod: refused, dev: want{"8.8.8.8", false, true}},
		{in: "[::1]", prod: refused, dev: want{"[::1]", true, true}},
		{in: "::1", prod: refused, dev: want{"[::1]", true, true}},
		{in: "[::1]:2583", prod: refused, dev: want{"[::1]:2583", true, true}},
		{in: "https://[0:0::1]:2583", prod: refused, dev: want{"[::1]:2583", false, true}},
		{in: "[2001:4860:4860::8888]", prod: refused, dev: want{"[2001:4860:4860::8888]", true, true}},
		{in: "pds.localhost", prod: refused, dev: want{"pds.localhost", false, true}},
		{in: "pds.internal", prod: refused, dev: want{"pds.internal", false, true}},
		{in: "printer.local", prod: refused, dev: want{"printer.local", false, true}},
		// Not a host at all: refused in both modes.
		{in: "", prod: refused, dev: refused},
		{in: "   ", prod: refused, dev: refused},
		{in: "not a host", prod: refused, dev: refused},
		{in: "example", prod: refused, dev: refused},
		{in: "example.com.", prod: refused, dev: refused},
		{in: "-bad-.example.com", prod: refused, dev: refused},
		{in: "ftp://example.com", prod: refused, dev: refused},
		{in: "https://user:pw@example.com", prod: refused, dev: refused},
		{in: "user@example.com", prod: refused, dev: refused},
		{in: "https://example.com/xrpc/x", prod: refused, dev: refused},
		{in: "https://example.com?x=1", prod: refused, dev: refused},
		{in: "example.com/path", prod: refused, dev: refused},
		{in: "example.com:", prod: refused, dev: refused},
		{in: "example.com:0", prod: refused, dev: refused},
		{in: "example.com:65536", prod: refused, dev: refused},
		{in: "example.com:08080", prod: refused, dev: refused},
		{in: "example.com:http", prod: refused, dev: refused},
		{in: "https://", prod: refused, dev: refused},
		{in: "[::1", prod: refused, dev: refused},
		{in: "[fe80::1%25eth0]:2583", prod: refused, dev: refused},
	}
	for _, c := range cases {
		for _, mode := range []struct {
			insecure bool
			want     want
		}{{false, c.prod}, {true, c.dev}} {
			host, noSSL, err := normalizeHostname(c.in, mode.insecure)
			if !mode.want.ok {
				if err == nil {
					t.Errorf("normalizeHostname(%q, insecure=%v) = %q, %v; want refused", c.in, mode.insecure, host, noSSL)
				} else if !errors.Is(err, ErrBadHostname) {
					t.Errorf("normalizeHostname(%q, insecure=%v): error %v is not ErrBadHostname", c.in, mode.insecure, err)
				}
				continue
			}
			if err != nil || host != mode.want.host || noSSL != mode.want.noSSL {
				t.Errorf("normalizeHostname(%q, insecure=%v) = %q, noSSL=%v, %v; want %q, noSSL=%v",
					c.in, mode.insecure, host, noSSL, err, mode.want.host, mode.want.noSSL)
			}
		}
	}
}

// endpointHost must agree with normalizeHostname, or an account's own
// host would be rejected as the wrong host.
func TestEndpointHostMatchesNormalizedHostname(t *testing.T) {
	cases := []struct{ endpoint, crawled, want string }{
		{"https://PDS.example.com", "pds.example.com", "pds.example.com"},
		{"https://pds.example.com:443/", "https://pds.example.com", "pds.example.com"},
		{"http://127.0.0.1:2583", "127.0.0.1:2583", "127.0.0.1:2583"},
		{"https://127.0.0.1:2583", "https://127.0.0.1:2583", "127.0.0.1:2583"},
		{"http://localhost:80", "localhost", "localhost"},
		{"https://[0:0::1]:2583", "https://[::1]:2583", "[::1]:2583"},
		{"https://pds.example.com:8443", "pds.example.com:8443", "pds.example.com:8443"},
	}
	for _, c := range cases {
		got := endpointHost(c.endpoint)
		host, _, err := normalizeHostname(c.crawled, true)
		if err != nil {
			t.Fatalf("normalizeHostname(%q): %v", c.crawled, err)
		}
		if got != c.want || host != c.want {
			t.Errorf("endpointHost(%q) = %q, normalizeHostname(%q) = %q; want both %q", c.endpoint, got, c.crawled, host, c.want)
		}
	}
	for _, bad := range []string{"", "not a url", "https://", "did:web:example.com"} {
		if got := endpointHost(bad); got != "" {
			t.Errorf("endpointHost(%q) = %q, want empty", bad, got)
		}
	}
}
