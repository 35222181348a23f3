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

	"github.com/bluesky-social/indigo/util/ssrf"
)

// ErrForbiddenAddress is returned (wrapped in a *net.OpError) when
// SafeDialContext refuses a destination: a non-public address or a port
// other than 80 and 443.
var ErrForbiddenAddress = errors.New("loop: destination address not allowed")

// The address and port rules are indigo's (util/ssrf: its reserved IPv4
// ranges, IPv6 global unicast only, ports 80 and 443, TCP only). indigo
// refuses less in one place, kept here: the IPv6 documentation ranges,
// which lie inside 2000::/3 and so pass its global-unicast test.
var docV6 = []netip.Prefix{
	netip.MustParsePrefix("2001:db8::/32"), // documentation
	netip.MustParsePrefix("3fff::/20"),     // documentation (RFC 9637)
}

// IsPublicAddr reports whether ip is a public unicast address a relay may
// connect to on a host's behalf: indigo's ssrf.IsPublicIPAddress, minus
// the IPv6 documentation ranges. IPv4-mapped IPv6 addresses are judged as
// IPv4.
func IsPublicAddr(ip netip.Addr) bool {
	ip = ip.Unmap()
	if !ip.IsValid() || !ssrf.IsPublicIPAddress(net.IP(ip.AsSlice())) {
		return false
	}
	for _, p := range docV6 {
		if p.Contains(ip) {
			return false
		}
	}
	return true
}

// checkDestination is a net.Dialer Control hook: indigo's
// ssrf.PublicOnlyControl plus the documentation ranges above, its refusal
// wrapped in ErrForbiddenAddress. It sees the resolved address of each
// connection attempt just before connect(2), so neither a DNS answer nor a
// rebinding between lookup and connect can lead the dial to a forbidden
// address, and no packet is sent to one.
func checkDestination(network, address string, c syscall.RawConn) error {
	if err := ssrf.PublicOnlyControl(network, address, c); err != nil {
		return fmt.Errorf("%w: %w", ErrForbiddenAddress, err)
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil || !IsPublicAddr(ap.Addr()) {
		return fmt.Errorf("%w: %s", ErrForbiddenAddress, address)
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
