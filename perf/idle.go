package perf

import (
	"context"
	"fmt"
	"time"
)

// IdleScenario holds upstream hosts and consumers connected without
// traffic, to measure what idle connections cost a target.
type IdleScenario struct {
	Name    string
	Network NetworkOptions
	// Consumers on the target's firehose.
	Consumers int
	// Hold is how long everything stays connected and idle after the last
	// connection; the target is observed throughout.
	Hold time.Duration
	// ConnectTimeout; zero takes DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// Live, when set, is called once a second while holding.
	Live func(Live)
}

// RunIdle starts the scenario's network and runs RunIdleOn on it.
func RunIdle(ctx context.Context, target Target, sc IdleScenario) (*Result, error) {
	n, err := StartNetwork(sc.Network)
	if err != nil {
		return nil, err
	}
	defer n.Close()
	return RunIdleOn(ctx, target, sc, n)
}

// RunIdleOn has the target crawl every host of n, connects the consumers,
// and observes the target for sc.Hold while nothing is emitted.
func RunIdleOn(ctx context.Context, target Target, sc IdleScenario, n *Network) (*Result, error) {
	res := &Result{
		Scenario:  sc.Name,
		Target:    target.Name,
		Profile:   "idle",
		Started:   time.Now(),
		Hosts:     len(n.Hosts),
		Accounts:  len(n.Accounts),
		Consumers: sc.Consumers,
	}
	if err := CrawlAll(ctx, target.RequestCrawlURL, n.Hosts); err != nil {
		return nil, err
	}
	if err := WaitSubscribed(ctx, n.Hosts, orDefault(sc.ConnectTimeout, DefaultConnectTimeout)); err != nil {
		return nil, err
	}
	if target.Prepare != nil {
		if err := target.Prepare(ctx, n.Hosts); err != nil {
			return nil, fmt.Errorf("perf: target prepare: %w", err)
		}
	}
	var fleet *Fleet
	if sc.Consumers > 0 {
		var err error
		fleet, err = StartFleet(ctx, FleetOptions{URL: target.FirehoseURL, Consumers: sc.Consumers, Cursor: -1, TLS: target.TLS})
		if err != nil {
			return nil, err
		}
		defer fleet.Close()
	}
	start := time.Now()
	hctx, cancel := context.WithTimeout(ctx, sc.Hold)
	defer cancel()
	res.Observed = observe(hctx, target.Observe, func(obs map[string]float64) {
		if sc.Live == nil {
			return
		}
		l := Live{Elapsed: time.Since(start), Observed: obs}
		if fleet != nil {
			l.Fleet = fleet.Stats()
		}
		sc.Live(l)
	})
	if fleet != nil {
		res.Fleet = fleet.Stats()
		if res.Fleet.Ended > 0 {
			res.Notes = append(res.Notes, fmt.Sprintf("idle: %d consumer streams ended", res.Fleet.Ended))
		}
	}
	for _, h := range n.Hosts {
		if h.Subscribers() == 0 {
			res.Notes = append(res.Notes, "idle: the target dropped a host subscription")
			break
		}
	}
	return res, nil
}
