package relay

import (
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/relay/relay/relay/dashboard"
)

// hostError is a host's last connection error, for the dashboard.
type hostError struct {
	msg string
	at  time.Time
}

// noteError records err as the host's last error (nil is ignored).
func (h *hostConn) noteError(err error) {
	if err != nil {
		h.lastErr.Store(&hostError{msg: err.Error(), at: time.Now()})
	}
}

// DashboardSource is the narrow, read-only view of the relay that the
// dashboard package is built on: snapshot functions, safe from any
// goroutine.
func (r *Relay) DashboardSource() dashboard.Source {
	return dashboard.Source{
		Stats:     r.dashStats,
		Hosts:     r.dashHosts,
		Consumers: r.dashConsumers,
		Ready:     r.Health,
	}
}

func (r *Relay) dashStats() dashboard.Stats {
	ls := r.log.Stats()
	drops := map[string]uint64{}
	r.metrics.dropped.each(func(reason string, c *metrics.Counter) { drops[reason] = c.Get() })
	return dashboard.Stats{
		HeadSeq:        r.ring.Head(),
		EventsIn:       r.metrics.in.sum(),
		EventsOut:      r.metrics.out.sum(),
		FramesSent:     r.metrics.framesDelivered.Get(),
		BytesSent:      r.metrics.bytesDelivered.Get(),
		Drops:          drops,
		EventLog:       dashboard.EventLog{Bytes: ls.Bytes, Segments: ls.Segments, OldestSeq: ls.OldestSeq},
		SequencerQueue: r.seq.QueueLen(),
		WorkerQueue:    r.ing.QueueLen(),
		Fsync:          histogramOf(r.metrics.fsyncSeconds),
	}
}

// histogramOf copies a VictoriaMetrics histogram's buckets, each named by
// its upper bound ("1.000e-03...1.136e-03" -> 0.001136).
func histogramOf(h *metrics.Histogram) dashboard.Histogram {
	var out dashboard.Histogram
	h.VisitNonZeroBuckets(func(vmrange string, count uint64) {
		_, hi, ok := strings.Cut(vmrange, "...")
		if !ok {
			return
		}
		upper, err := strconv.ParseFloat(hi, 64)
		if err != nil {
			upper = math.Inf(1)
		}
		out.Buckets = append(out.Buckets, dashboard.Bucket{Upper: upper, Count: count})
	})
	return out
}

func (r *Relay) dashHosts() []dashboard.Host {
	hosts := r.hosts.allHosts()
	out := make([]dashboard.Host, 0, len(hosts))
	for _, h := range hosts {
		info := h.info()
		d := dashboard.Host{
			Hostname: info.Hostname, Status: string(info.Status), Connected: info.Connected,
			Failures: info.Failures, Cursor: info.Cursor, Received: info.Received,
			Inflight: info.Inflight, Accounts: info.AccountCount,
		}
		if e := h.lastErr.Load(); e != nil {
			d.LastError, d.LastErrorAt = e.msg, e.at
		}
		if t := h.lastEvent.Load(); t != 0 {
			d.LastEvent = time.Unix(0, t)
		}
		out = append(out, d)
	}
	return out
}

func (r *Relay) dashConsumers() []dashboard.Consumer {
	cs := r.bc.Consumers()
	out := make([]dashboard.Consumer, len(cs))
	for i, c := range cs {
		out[i] = dashboard.Consumer{
			ID: c.ID, RemoteAddr: c.RemoteAddr, UserAgent: c.UserAgent, Cursor: c.Cursor,
			Position: c.Position, Lag: c.Lag, Sent: c.EventsSent, QueuedBytes: c.QueuedBytes, Since: c.ConnectedSince,
		}
	}
	return out
}

// registerLagGauges adds the consumers' lag figures to /metrics, computed
// at scrape time: the largest lag in events, how many consumers lag, and
// the bytes queued on all consumer sockets.
func (b *Broadcaster) registerLagGauges(m *Metrics) {
	summary := func() (maxLag, lagging, queued int64) {
		head := b.ring.Head()
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, c := range b.all {
			lag := head - c.pos.Load()
			maxLag = max(maxLag, lag)
			if lag > 0 {
				lagging++
			}
			queued += c.queued.Load()
		}
		return maxLag, lagging, queued
	}
	m.Gauge("relay_consumers_max_lag_events", func() float64 { l, _, _ := summary(); return float64(l) })
	m.Gauge("relay_consumers_lagging", func() float64 { _, n, _ := summary(); return float64(n) })
	m.Gauge("relay_consumers_queued_bytes", func() float64 { _, _, q := summary(); return float64(q) })
}
