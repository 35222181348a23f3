package dashboard

import (
	"math"
	"sort"
	"sync"
	"time"
)

// sample is one reading of the cumulative counters.
type sample struct {
	at         time.Time
	in, out    uint64
	frames     uint64
	bytes      uint64
	drops      uint64
	dropsBy    map[string]uint64 // bounded by the number of reasons
	head       int64
	fsync      Histogram
	hasReading bool
}

// sampler keeps the last n samples in a fixed ring: memory is bounded by
// n whatever the uptime.
type sampler struct {
	mu   sync.Mutex
	ring []sample
	next int // index the next sample is written to
	full bool
}

func newSampler(n int) *sampler {
	if n < 2 {
		n = 2
	}
	return &sampler{ring: make([]sample, n)}
}

func (s *sampler) add(x sample) {
	x.hasReading = true
	s.mu.Lock()
	s.ring[s.next] = x
	s.next++
	if s.next == len(s.ring) {
		s.next, s.full = 0, true
	}
	s.mu.Unlock()
}

// ordered returns the samples oldest first (a copy).
func (s *sampler) ordered() []sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.full {
		return append([]sample(nil), s.ring[:s.next]...)
	}
	out := make([]sample, 0, len(s.ring))
	out = append(out, s.ring[s.next:]...)
	return append(out, s.ring[:s.next]...)
}

// Point is one per-interval rate on the chart.
type Point struct {
	T     int64   `json:"t"` // unix milliseconds at the end of the interval
	In    float64 `json:"in"`
	Out   float64 `json:"out"`
	Sent  float64 `json:"sent"`  // frames written to consumers per second
	Drops float64 `json:"drops"` // events dropped per second
}

// rate is a counter's per-second increase between two samples; a counter
// that went backwards (a restart of the source) counts as no increase.
func rate(a, b uint64, dt float64) float64 {
	if b < a || dt <= 0 {
		return 0
	}
	return float64(b-a) / dt
}

// series turns consecutive samples into per-interval rates.
func series(ss []sample) []Point {
	if len(ss) < 2 {
		return []Point{}
	}
	out := make([]Point, 0, len(ss)-1)
	for i := 1; i < len(ss); i++ {
		a, b := ss[i-1], ss[i]
		dt := b.at.Sub(a.at).Seconds()
		out = append(out, Point{
			T:     b.at.UnixMilli(),
			In:    rate(a.in, b.in, dt),
			Out:   rate(a.out, b.out, dt),
			Sent:  rate(a.frames, b.frames, dt),
			Drops: rate(a.drops, b.drops, dt),
		})
	}
	return out
}

// Latency summarizes a histogram's observations over a window.
type Latency struct {
	WindowSeconds float64 `json:"windowSeconds"`
	Count         uint64  `json:"count"`
	// P50 and P99 are upper bounds of the buckets holding the quantiles,
	// in milliseconds; -1 when nothing was observed in the window.
	P50ms float64 `json:"p50ms"`
	P99ms float64 `json:"p99ms"`
	Maxms float64 `json:"maxms"`
}

// windowLatency is the latency of the observations between a and b.
func windowLatency(a, b Histogram, window float64) Latency {
	prev := make(map[float64]uint64, len(a.Buckets))
	for _, bk := range a.Buckets {
		prev[bk.Upper] += bk.Count
	}
	type bucket struct {
		upper float64
		n     uint64
	}
	var bs []bucket
	var total uint64
	for _, bk := range b.Buckets {
		p := prev[bk.Upper]
		if bk.Count <= p {
			continue
		}
		bs = append(bs, bucket{bk.Upper, bk.Count - p})
		total += bk.Count - p
	}
	l := Latency{WindowSeconds: window, Count: total, P50ms: -1, P99ms: -1, Maxms: -1}
	if total == 0 {
		return l
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].upper < bs[j].upper })
	q := func(f float64) float64 {
		rank := uint64(math.Ceil(f * float64(total)))
		var acc uint64
		for _, x := range bs {
			acc += x.n
			if acc >= rank {
				return x.upper * 1000
			}
		}
		return bs[len(bs)-1].upper * 1000
	}
	l.P50ms, l.P99ms, l.Maxms = q(0.5), q(0.99), bs[len(bs)-1].upper*1000
	return l
}
