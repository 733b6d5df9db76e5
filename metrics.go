package tether

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tetherrpc/tether/peer"
)

// WithMetrics registers the node's Prometheus metrics on reg (see README,
// "Health, metrics and the watchdog", for the list). Default: none,
// and no cost. When reg is also a prometheus.Gatherer (a *prometheus.Registry
// is), Health serves them at /metrics too.
//
// Counters and gauges are read from the node's own statistics when scraped,
// so they cost nothing between scrapes; only the latency histograms are
// observed on the call path (one pre-resolved observation per handler call,
// one labelled observation per outgoing call).
func WithMetrics(reg prometheus.Registerer) Option { return func(o *options) { o.metrics = reg } }

// metrics are the node's instruments beyond what it reads when scraped.
type metrics struct {
	callDuration    *prometheus.HistogramVec
	handlerDuration *prometheus.HistogramVec
	probeRTT        prometheus.Histogram
	evictions       *prometheus.CounterVec
}

// latencyBuckets span loopback (tens of µs) to a slow WAN (seconds).
var latencyBuckets = prometheus.ExponentialBuckets(50e-6, 2.5, 14) // 50 µs .. ~7.5 s

func newMetrics() *metrics {
	return &metrics{
		callDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tether_call_duration_seconds", Help: "Calls this node made, by method: time to answer or failure.",
			Buckets: latencyBuckets,
		}, []string{"method"}),
		handlerDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tether_handler_duration_seconds", Help: "Handlers this node ran, by method.",
			Buckets: latencyBuckets,
		}, []string{"method"}),
		probeRTT: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tether_probe_rtt_seconds", Help: "Round trips of liveness probes, answered by peers' processes.",
			Buckets: latencyBuckets,
		}),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_evictions_total", Help: "References evicted or closed, by cause.",
		}, []string{"cause"}),
	}
}

// register puts the node's metrics on reg and hooks them up.
func (n *Node) registerMetrics(reg prometheus.Registerer) error {
	m := n.metrics
	for _, c := range []prometheus.Collector{m.callDuration, m.handlerDuration, m.probeRTT, m.evictions, nodeCollector{n}} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	n.reg.Monitor().OnRTT(func(d time.Duration) { m.probeRTT.Observe(d.Seconds()) })
	n.reg.Subscribe(func(ev peer.Event) {
		if ev.Kind == peer.Disconnected {
			m.evictions.WithLabelValues(peer.CauseClass(ev.Cause)).Inc()
		}
	})
	return nil
}

func (m *metrics) observeCall(method string, took time.Duration, _ error) {
	m.callDuration.WithLabelValues(method).Observe(took.Seconds())
}

// nodeCollector reads the node's statistics at scrape time.
type nodeCollector struct{ n *Node }

var (
	descPeers     = prometheus.NewDesc("tether_peers", "Live peer references, by state.", []string{"state"}, nil)
	descInFlight  = prometheus.NewDesc("tether_calls_in_flight", "Calls in flight: out, this node's calls awaiting answers; in, peers' calls running here.", []string{"direction"}, nil)
	descCalls     = prometheus.NewDesc("tether_calls_total", "Calls made (out) and served (in).", []string{"direction"}, nil)
	descConnects  = prometheus.NewDesc("tether_connects_total", "References made: first connections and reconnections.", nil, nil)
	descReconnect = prometheus.NewDesc("tether_reconnects_total", "Reconnections of kept addresses after a loss.", nil, nil)
	descLate      = prometheus.NewDesc("tether_late_responses_total", "Answers that arrived after their caller gave up: dropped, never logged one by one.", nil, nil)
	descUnsent    = prometheus.NewDesc("tether_calls_cancelled_unsent_total", "Calls cancelled before their request was written: never sent.", nil, nil)
	descProbes    = prometheus.NewDesc("tether_probes_total", "Liveness probes sent.", nil, nil)
	descLate2     = prometheus.NewDesc("tether_liveness_late_checks_total", "Liveness checks that ran late (this process was paused), so re-probed instead of judged.", nil, nil)
	descLog       = prometheus.NewDesc("tether_log_entries_total", "Log entries offered to the node's non-blocking pipeline, by fate.", []string{"state"}, nil)
	descLogQueued = prometheus.NewDesc("tether_log_entries_queued", "Log entries waiting for the sink.", nil, nil)
	descFindings  = prometheus.NewDesc("tether_watchdog_findings_total", "Watchdog findings by kind: each stuck call once, each stall, breach and trend once per episode.", []string{"kind"}, nil)
	descHealthy   = prometheus.NewDesc("tether_healthy", "1 when /healthz would answer 200, else 0.", nil, nil)
	descHandlers  = prometheus.NewDesc("tether_handlers_in_flight", "Handler calls running now, as the watchdog counts them.", nil, nil)
	descPenalized = prometheus.NewDesc("tether_connections_penalized_total", "Connections closed at accept, unheard, because their host broke the protocol lately (WithViolationPenalty).", nil, nil)
	descRefused   = prometheus.NewDesc("tether_handshakes_refused_total", "Handshakes refused, by reason: not_admitted, the admission policy (WithAdmission) refused the peer, on either side.", []string{"reason"}, nil)
	descIncidents = prometheus.NewDesc("tether_incidents_total", "Incident reports: opened, folded (triggers merged into an open one), suppressed (rate limit), written.", []string{"state"}, nil)
)

func (c nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPeers, descInFlight, descCalls, descConnects, descReconnect, descLate, descUnsent, descProbes, descLate2, descLog, descLogQueued, descIncidents, descFindings, descHealthy, descHandlers, descPenalized, descRefused} {
		ch <- d
	}
}

func (c nodeCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	counter := func(d *prometheus.Desc, v uint64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
	s := n.reg.Stats()
	gauge(descPeers, float64(s.Peers-s.Suspect), "alive")
	gauge(descPeers, float64(s.Suspect), "suspect")
	gauge(descInFlight, float64(s.Outstanding), "out")
	gauge(descInFlight, float64(s.Serving), "in")
	counter(descCalls, s.CallsOut, "out")
	counter(descCalls, s.CallsIn, "in")
	counter(descConnects, s.Connects)
	counter(descReconnect, s.Reconnects)
	counter(descLate, s.LateResponses)
	counter(descUnsent, s.Unsent)
	ms := n.reg.Monitor().Stats()
	counter(descProbes, ms.Probes)
	counter(descLate2, ms.LateChecks)
	counter(descPenalized, n.srv.Penalized())
	counter(descRefused, n.opts.admission.refusals(), "not_admitted")
	ws := n.wd.Stats()
	for kind, v := range ws.Found {
		counter(descFindings, v, kind.String())
	}
	healthy := 0.0
	if len(n.healthReasons()) == 0 {
		healthy = 1
	}
	gauge(descHealthy, healthy)
	gauge(descHandlers, float64(ws.InFlight))
	if n.async != nil {
		a := n.async.Stats()
		counter(descLog, a.Enqueued, "enqueued")
		counter(descLog, a.Written, "written")
		counter(descLog, a.Dropped, "dropped")
		gauge(descLogQueued, float64(a.Queued))
	}
	if n.rec != nil {
		r := n.rec.Stats()
		counter(descIncidents, r.Incidents, "opened")
		counter(descIncidents, r.Folded, "folded")
		counter(descIncidents, r.Suppressed, "suppressed")
		counter(descIncidents, r.Written, "written")
	}
}
