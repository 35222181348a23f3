package inproc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/relay/relay/perf"
	"github.com/relay/relay/relay"
)

// LiveOptions shape a small live system: a synthetic network crawled by an
// in-process relay, a steady trickle of signed commits, and a consumer
// fleet. Operator-facing tests (dashboard, Grafana board, admin CLI) run
// against it.
type LiveOptions struct {
	Hosts, AccountsPerHost int
	Consumers              int
	// Rate is commits per second across all accounts (0: none).
	Rate float64
	// Configure adjusts the relay's configuration (see Start).
	Configure func(*relay.Config)
}

// Live is a running relay with its network, load and consumers.
type Live struct {
	Net   *perf.Network
	Relay *Relay
	Fleet *perf.Fleet

	stop     chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	emitErr  error
	emitted  int
	closeErr error
	once     sync.Once
}

// liveWait bounds the start-up waits (crawl, subscription, consumers).
const liveWait = 30 * time.Second

// StartLive starts the network, the relay (crawling every host), the
// consumers and the commit trickle. Close stops everything.
func StartLive(opts LiveOptions) (_ *Live, err error) {
	l := &Live{stop: make(chan struct{})}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	if l.Net, err = perf.StartNetwork(perf.NetworkOptions{Hosts: opts.Hosts, AccountsPerHost: opts.AccountsPerHost, P256Fraction: 0.2}); err != nil {
		return nil, err
	}
	if l.Relay, err = Start(context.Background(), Options{PLCURL: l.Net.PLC.URL(), Configure: opts.Configure}); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), liveWait)
	defer cancel()
	if err = perf.CrawlAll(ctx, l.Relay.Target().RequestCrawlURL, l.Net.Hosts); err != nil {
		return nil, err
	}
	if err = perf.WaitSubscribed(ctx, l.Net.Hosts, liveWait); err != nil {
		return nil, err
	}
	if opts.Consumers > 0 {
		if l.Fleet, err = perf.StartFleet(context.Background(), perf.FleetOptions{URL: l.Relay.FirehoseURL(), Consumers: opts.Consumers, Cursor: -1}); err != nil {
			return nil, err
		}
		for consumersOf(l.Relay.Relay()) < opts.Consumers {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("relay counts %d of %d consumers: %w", consumersOf(l.Relay.Relay()), opts.Consumers, ctx.Err())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if opts.Rate > 0 && len(l.Net.Accounts) > 0 {
		l.wg.Add(1)
		go l.emit(opts.Rate)
	}
	return l, nil
}

func consumersOf(r *relay.Relay) int { return len(r.DashboardSource().Consumers()) }

// emit writes one commit per 1/rate seconds, round-robin over accounts
// (one goroutine, so each account's commits chain in order).
func (l *Live) emit(rate float64) {
	defer l.wg.Done()
	t := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		a := l.Net.Accounts[i%len(l.Net.Accounts)]
		c, err := a.Commit(1)
		if err != nil {
			l.mu.Lock()
			l.emitErr = err
			l.mu.Unlock()
			return
		}
		a.PDS().Emit(perf.Event{Commit: c})
		l.mu.Lock()
		l.emitted++
		l.mu.Unlock()
	}
}

// Emitted is the number of commits emitted so far, and the error that
// stopped the trickle, if any.
func (l *Live) Emitted() (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.emitted, l.emitErr
}

// CloseRelay stops the load and shuts the relay down, leaving the network
// up (to see how clients behave when the relay is gone).
func (l *Live) CloseRelay() error {
	l.once.Do(func() {
		close(l.stop)
		l.wg.Wait()
		if l.Fleet != nil {
			l.Fleet.Close()
		}
		if l.Relay != nil {
			ctx, cancel := context.WithTimeout(context.Background(), liveWait)
			defer cancel()
			l.closeErr = l.Relay.Close(ctx)
		}
	})
	return l.closeErr
}

// Close stops everything.
func (l *Live) Close() error {
	err := l.CloseRelay()
	if l.Net != nil {
		l.Net.Close()
	}
	_, emitErr := l.Emitted()
	return errors.Join(err, emitErr)
}
