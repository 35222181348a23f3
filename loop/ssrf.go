package loop

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

// ErrForbiddenAddress is returned (wrapped in a *net.OpError) when
// SafeDialContext refuses a destination: a non-public address or a port
// other than 80 and 443.
var ErrForbiddenAddress = errors.New("loop: destination address not allowed")

// Ports a safe dial may connect to: PDS hosts serve on HTTPS, and plain
// HTTP is tolerated for redirects.
const (
	portHTTP  = 80
	portHTTPS = 443
)

// blockedV4 are the IPv4 ranges that are not public unicast destinations
// (RFC 6890 special-purpose registry and friends).
var blockedV4 = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),       // "this network"
	netip.MustParsePrefix("10.0.0.0/8"),      // private
	netip.MustParsePrefix("100.64.0.0/10"),   // carrier-grade NAT
	netip.MustParsePrefix("127.0.0.0/8"),     // loopback
	netip.MustParsePrefix("169.254.0.0/16"),  // link-local, cloud metadata
	netip.MustParsePrefix("172.16.0.0/12"),   // private
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
	netip.MustParsePrefix("192.0.2.0/24"),    // TEST-NET-1
	netip.MustParsePrefix("192.168.0.0/16"),  // private
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
	netip.MustParsePrefix("198.51.100.0/24"), // TEST-NET-2
	netip.MustParsePrefix("203.0.113.0/24"),  // TEST-NET-3
	netip.MustParsePrefix("224.0.0.0/4"),     // multicast
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, broadcast
}

// IPv6: only global unicast (2000::/3) is public, minus documentation.
var (
	globalUnicastV6 = netip.MustParsePrefix("2000::/3")
	blockedV6       = []netip.Prefix{
		netip.MustParsePrefix("2001:db8::/32"), // documentation
		netip.MustParsePrefix("3fff::/20"),     // documentation (RFC 9637)
	}
)

// IsPublicAddr reports whether ip is a public unicast address a relay may
// connect to on a host's behalf. IPv4-mapped IPv6 addresses are judged as
// IPv4.
func IsPublicAddr(ip netip.Addr) bool {
	ip = ip.Unmap()
	switch {
	case !ip.IsValid():
		return false
	case ip.Is4():
		for _, p := range blockedV4 {
			if p.Contains(ip) {
				return false
			}
		}
		return true
	default:
		if !globalUnicastV6.Contains(ip) {
			return false
		}
		for _, p := range blockedV6 {
			if p.Contains(ip) {
				return false
			}
		}
		return true
	}
}

// checkDestination is a net.Dialer Control hook. It sees the resolved
// address of each connection attempt just before connect(2), so neither a
// DNS answer nor a rebinding between lookup and connect can lead the dial
// to a forbidden address, and no packet is sent to one.
func checkDestination(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrForbiddenAddress, address, err)
	}
	if p := ap.Port(); p != portHTTP && p != portHTTPS {
		return fmt.Errorf("%w: port %d", ErrForbiddenAddress, p)
	}
	if !IsPublicAddr(ap.Addr()) {
		return fmt.Errorf("%w: %s", ErrForbiddenAddress, ap.Addr())
	}
	return nil
}

// SafeDialContext returns a DialContext that refuses every non-public
// destination address and every port but 80 and 443, checked at connect
// time (see checkDestination). base supplies timeouts and keep-alive; its
// own Control hook, if any, runs after the check. base is copied.
func SafeDialContext(base *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{}
	if base != nil {
		d = *base
	}
	inner := d.Control
	d.ControlContext = nil // Control must run: ControlContext would take precedence
	d.Control = func(network, address string, c syscall.RawConn) error {
		if err := checkDestination(network, address, c); err != nil {
			return err
		}
		if inner != nil {
			return inner(network, address, c)
		}
		return nil
	}
	return d.DialContext
}

// HTTP client limits for NewHTTPClient.
const (
	// httpDialTimeout bounds one TCP connect.
	httpDialTimeout = 10 * time.Second
	// maxRedirects bounds redirects followed by the client.
	maxRedirects = 5
)

// errTooManyRedirects stops a redirect chain longer than maxRedirects.
var errTooManyRedirects = fmt.Errorf("loop: more than %d redirects", maxRedirects)

// NewHTTPClient returns an HTTP client for requests made on a host's
// behalf (describeServer, did:web). Unless allowInsecure, it connects only
// through SafeDialContext and ignores proxy settings (a proxy would dial
// for us, unchecked). timeout bounds each whole request.
func NewHTTPClient(allowInsecure bool, timeout time.Duration) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	dialer := &net.Dialer{Timeout: httpDialTimeout, KeepAlive: 30 * time.Second}
	if allowInsecure {
		tr.DialContext = dialer.DialContext
	} else {
		tr.DialContext = SafeDialContext(dialer)
		tr.Proxy = nil
	}
	return &http.Client{
		Transport: tr,
		Timeout:   timeout,
		CheckRedirect: func(_ *http.Request, via []*http.Request) error {
			if len(via) >= maxRedirects {
				return errTooManyRedirects
			}
			return nil
		},
	}
}
