package perf

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// Histogram layout: log-linear buckets, histSub per power of two, from 1 µs
// to 2^histOctaves µs (about 73 minutes at 32 octaves). A bucket's width
// is at most 1/histSub of its value, so a quantile is within ~9% (half a
// bucket, reported at the geometric middle: ~4.5%).
const (
	histSub     = 8
	histOctaves = 32
	histBuckets = histOctaves*histSub + 1 // + one bucket for values < 1 µs
)

// Histogram counts durations in fixed log-linear buckets with atomic adds,
// so one writer per histogram costs a few nanoseconds per sample and
// readers can snapshot it while it is written. It never allocates after
// creation (2 KiB).
type Histogram struct {
	counts [histBuckets]atomic.Uint64
	total  atomic.Uint64
	max    atomic.Int64
}

// bucketOf returns the bucket of d.
func bucketOf(d time.Duration) int {
	us := d.Microseconds()
	if us < 1 {
		return 0
	}
	// octave = floor(log2(us)); sub = the next histSub-resolution fraction.
	oct := 63 - bits.LeadingZeros64(uint64(us))
	if oct >= histOctaves {
		return histBuckets - 1
	}
	var frac int64
	if oct > 0 {
		frac = ((us - int64(1)<<oct) * histSub) >> oct
	}
	return 1 + oct*histSub + int(frac)
}

// bucketValue is the representative duration of bucket b: the geometric
// middle of its range.
func bucketValue(b int) time.Duration {
	if b <= 0 {
		return 500 * time.Nanosecond
	}
	b--
	oct := b / histSub
	sub := b % histSub
	lo := math.Ldexp(1+float64(sub)/histSub, oct)
	hi := math.Ldexp(1+float64(sub+1)/histSub, oct)
	return time.Duration(math.Sqrt(lo*hi) * float64(time.Microsecond))
}

// Record adds one sample.
func (h *Histogram) Record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[bucketOf(d)].Add(1)
	h.total.Add(1)
	for {
		m := h.max.Load()
		if int64(d) <= m || h.max.CompareAndSwap(m, int64(d)) {
			return
		}
	}
}

// Count is the number of samples.
func (h *Histogram) Count() uint64 { return h.total.Load() }

// Max is the largest sample.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max.Load()) }

// Merge adds the samples of o to h.
func (h *Histogram) Merge(o *Histogram) {
	for i := range o.counts {
		if c := o.counts[i].Load(); c > 0 {
			h.counts[i].Add(c)
		}
	}
	h.total.Add(o.total.Load())
	for {
		m, om := h.max.Load(), o.max.Load()
		if om <= m || h.max.CompareAndSwap(m, om) {
			return
		}
	}
}

// Quantile returns the duration below which a fraction q of the samples
// fall (0 when empty).
func (h *Histogram) Quantile(q float64) time.Duration {
	total := h.total.Load()
	if total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(total)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			v := bucketValue(i)
			if m := h.Max(); v > m {
				return m
			}
			return v
		}
	}
	return h.Max()
}

// LatencySummary is a histogram reduced to the figures a report prints.
type LatencySummary struct {
	Count uint64        `json:"count"`
	P50   time.Duration `json:"p50_ns"`
	P90   time.Duration `json:"p90_ns"`
	P99   time.Duration `json:"p99_ns"`
	P999  time.Duration `json:"p999_ns"`
	Max   time.Duration `json:"max_ns"`
}

// Summary reduces h.
func (h *Histogram) Summary() LatencySummary {
	return LatencySummary{
		Count: h.Count(),
		P50:   h.Quantile(0.50),
		P90:   h.Quantile(0.90),
		P99:   h.Quantile(0.99),
		P999:  h.Quantile(0.999),
		Max:   h.Max(),
	}
}
