package relay

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDefaultConfigValid(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	c.MetricsListen = "" // metrics listener disabled
	c.Listen = "127.0.0.1:0"
	c.Retention, c.MaxEventsBytes, c.MaxConsumers, c.NewHostsPerDay = 0, 0, 0, 0
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestConfigValidateRefuses(t *testing.T) {
	cases := []struct {
		name   string
		change func(c *Config)
		want   string
	}{
		{"outbound cap 0", func(c *Config) { c.ConsumerOutboundCap = 0 }, "RELAY_CONSUMER_OUTBOUND_BYTES"},
		{"outbound cap negative", func(c *Config) { c.ConsumerOutboundCap = -1 }, "RELAY_CONSUMER_OUTBOUND_BYTES"},
		{"max lag 0", func(c *Config) { c.ConsumerMaxLag = 0 }, "RELAY_CONSUMER_MAX_LAG"},
		{"max consumers negative", func(c *Config) { c.MaxConsumers = -1 }, "RELAY_MAX_CONSUMERS"},
		{"retention negative", func(c *Config) { c.Retention = -time.Hour }, "RELAY_RETENTION_HOURS"},
		{"max bytes negative", func(c *Config) { c.MaxEventsBytes = -1 }, "RELAY_MAX_EVENTS_GB"},
		{"workers 0", func(c *Config) { c.FrameWorkers = 0 }, "FRAME_WORKERS"},
		{"loops 0", func(c *Config) { c.EventLoops = 0 }, "RELAY_EVENT_LOOPS"},
		{"ring 0", func(c *Config) { c.RingSize = 0 }, "RELAY_RING_SIZE"},
		{"port too big", func(c *Config) { c.Listen = ":70000" }, "RELAY_PORT"},
		{"port not a number", func(c *Config) { c.Listen = ":http-ish" }, "RELAY_PORT"},
		{"no port", func(c *Config) { c.Listen = "localhost" }, "RELAY_PORT"},
		{"metrics port bad", func(c *Config) { c.MetricsListen = ":-1" }, "RELAY_METRICS_PORT"},
		{"same ports", func(c *Config) { c.MetricsListen = c.Listen }, "RELAY_METRICS_PORT"},
		{"no data dir", func(c *Config) { c.DataDir = "" }, "RELAY_DATA_DIR"},
		{"plc not a URL", func(c *Config) { c.PLCHost = "plc.directory" }, "RELAY_PLC_HOST"},
		{"fsync negative", func(c *Config) { c.FsyncInterval = -time.Millisecond }, "FsyncInterval"},
		{"stall 0", func(c *Config) { c.IngestStallTimeout = 0 }, "IngestStallTimeout"},
		{"new hosts negative", func(c *Config) { c.NewHostsPerDay = -1 }, "RELAY_NEW_HOSTS_PER_DAY"},
		{"account limit negative", func(c *Config) { c.DefaultAccountLimit = -1 }, "DefaultAccountLimit"},
		{"segment events negative", func(c *Config) { c.SegmentEvents = -1 }, "SegmentEvents"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.change(&c)
			err := c.Validate()
			if !errors.Is(err, ErrBadConfig) {
				t.Fatalf("Validate() = %v, want ErrBadConfig", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not name %s", err, tc.want)
			}
		})
	}
}

func TestConfigValidateReportsEveryProblem(t *testing.T) {
	c := DefaultConfig()
	c.ConsumerOutboundCap, c.ConsumerMaxLag = 0, 0
	err := c.Validate()
	for _, want := range []string{"RELAY_CONSUMER_OUTBOUND_BYTES", "RELAY_CONSUMER_MAX_LAG"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
}
