package relay

import (
	"math"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Per-host event rate limits, the reference relay's numbers: an untrusted
// host may send 50/s + limit/1000, 2,500/h + limit and 20,000/day +
// 10 x limit events, where limit is its account limit; a trusted host
// 5,000/s, 50M/h and 500M/day. Over a limit the host's socket is paused
// (the event waits; nothing is dropped) until the limit allows it again.
const (
	ratePerSecondBase  = 50
	ratePerHourBase    = 2_500
	ratePerDayBase     = 20_000
	trustedPerSecond   = 5_000
	trustedPerHour     = 50_000_000
	trustedPerDay      = 500_000_000
	rateWindowSeconds  = 10 // the "current rate" shown per host is over this many seconds
	rateResumeInterval = resumeInterval
)

// Identity lookups a host's events may cause (DID resolutions and
// re-resolutions after bad signatures): an untrusted host 10/s + limit/100
// with bursts of 20 + limit/10, a trusted one 1,000/s with bursts of 10,000.
const (
	identityPerSecondBase = 10
	identityBurstBase     = 20
	trustedIdentityRate   = 1_000
	trustedIdentityBurst  = 10_000
)

// identityLimiter is the lookup budget of a host with these limits.
func identityLimiter(accountLimit int64, trusted bool) *rate.Limiter {
	if trusted {
		return rate.NewLimiter(trustedIdentityRate, trustedIdentityBurst)
	}
	l := max(accountLimit, 0)
	return rate.NewLimiter(rate.Limit(identityPerSecondBase+float64(l)/100), int(identityBurstBase+l/10))
}

// HostLimits are a host's event rate limits.
type HostLimits struct {
	PerSecond float64 `json:"perSecond"`
	PerHour   float64 `json:"perHour"`
	PerDay    float64 `json:"perDay"`
}

// limitsFor returns the limits of a host with the account limit and trust.
func limitsFor(accountLimit int64, trusted bool) HostLimits {
	if trusted {
		return HostLimits{PerSecond: trustedPerSecond, PerHour: trustedPerHour, PerDay: trustedPerDay}
	}
	l := float64(max(accountLimit, 0))
	return HostLimits{PerSecond: ratePerSecondBase + l/1000, PerHour: ratePerHourBase + l, PerDay: ratePerDayBase + 10*l}
}

// hostRate enforces one host's limits with three token buckets (a second,
// an hour, a day), each holding at most its window's allowance, and
// measures the host's current rate. Taking a token happens on the host's
// event loop; limits change from the admin API (rate.Limiter is safe for
// both).
type hostRate struct {
	lims   atomic.Pointer[limiterSet]
	limits atomic.Pointer[HostLimits]

	throttledNanos atomic.Int64 // total time the host was held at a limit
	throttledSince atomic.Int64 // when the current hold began (0: none)

	// buckets counts events per second over the last rateWindowSeconds.
	buckets [rateWindowSeconds]struct{ sec, n atomic.Int64 }
}

// limiterSet is the three buckets of one set of limits.
type limiterSet struct{ sec, hour, day *rate.Limiter }

// newLimiterSet makes full buckets: nothing before counts against them.
func newLimiterSet(l HostLimits) *limiterSet {
	return &limiterSet{
		sec:  rate.NewLimiter(rate.Limit(l.PerSecond), burstOf(l.PerSecond)),
		hour: rate.NewLimiter(rate.Limit(l.PerHour/3600), burstOf(l.PerHour)),
		day:  rate.NewLimiter(rate.Limit(l.PerDay/86400), burstOf(l.PerDay)),
	}
}

func newHostRate(l HostLimits) *hostRate {
	r := &hostRate{}
	r.set(l)
	return r
}

func burstOf(window float64) int {
	return int(min(math.Max(window, 1), math.MaxInt32))
}

// set changes the limits live (admin changeLimits, trust): the host
// starts over with full buckets of the new size.
func (r *hostRate) set(l HostLimits) {
	r.lims.Store(newLimiterSet(l))
	r.limits.Store(&l)
}

// ready reports whether one more event fits every limit now.
func (r *hostRate) ready(now time.Time) bool {
	s := r.lims.Load()
	return s.sec.TokensAt(now) >= 1 && s.hour.TokensAt(now) >= 1 && s.day.TokensAt(now) >= 1
}

// take counts one event against the limits (after ready said yes) and in
// the current-rate window.
func (r *hostRate) take(now time.Time) {
	ls := r.lims.Load()
	ls.sec.AllowN(now, 1)
	ls.hour.AllowN(now, 1)
	ls.day.AllowN(now, 1)
	s := now.Unix()
	b := &r.buckets[s%rateWindowSeconds]
	if b.sec.Load() != s {
		b.sec.Store(s)
		b.n.Store(0)
	}
	b.n.Add(1)
}

// hold records that the host began waiting for its limits.
func (r *hostRate) hold(now time.Time) {
	r.throttledSince.CompareAndSwap(0, now.UnixNano())
}

// release ends a hold; it returns how long it lasted.
func (r *hostRate) release(now time.Time) time.Duration {
	since := r.throttledSince.Swap(0)
	if since == 0 {
		return 0
	}
	d := time.Duration(now.UnixNano() - since)
	r.throttledNanos.Add(int64(d))
	return d
}

// current is the host's event rate over the last full rateWindowSeconds.
func (r *hostRate) current(now time.Time) float64 {
	s := now.Unix()
	var n int64
	for i := range r.buckets {
		b := &r.buckets[i]
		if age := s - b.sec.Load(); age >= 1 && age <= rateWindowSeconds {
			n += b.n.Load()
		}
	}
	return float64(n) / rateWindowSeconds
}

// trustedDomains is RELAY_TRUSTED_DOMAINS: host suffixes given the trusted
// tier; "*" trusts every host.
type trustedDomains []string

func parseTrustedDomains(s string) trustedDomains {
	var out trustedDomains
	for _, d := range splitList(s) {
		out = append(out, strings.TrimPrefix(strings.ToLower(d), "."))
	}
	return out
}

// trusts reports whether hostname (host[:port]) is in a trusted domain.
func (t trustedDomains) trusts(hostname string) bool {
	name := hostname
	if i := strings.LastIndexByte(name, ':'); i > 0 && !strings.HasSuffix(name, "]") {
		name = name[:i]
	}
	for _, d := range t {
		if d == "*" || name == d || strings.HasSuffix(name, "."+d) {
			return true
		}
	}
	return false
}

// throttled counts d of time h spent held at its rate limits.
func (m *HostManager) throttled(h *hostConn, d time.Duration) {
	if d > 0 {
		m.metrics.set.GetOrCreateFloatCounter(`relay_host_throttled_seconds_total{host="` + h.name + `"}`).Add(d.Seconds())
	}
}
