package node

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"doppel/node/peer/membership"
	"doppel/replicate/store"
	"doppel/replicate/wire"
)

// metrics are the node's Prometheus metrics, on a registry of its own.
type metrics struct {
	reg           *prometheus.Registry
	epochs        *prometheus.CounterVec
	phases        *prometheus.HistogramVec
	pagesChanged  *prometheus.CounterVec
	bytesStored   *prometheus.CounterVec
	bytesSent     *prometheus.CounterVec
	bytesReceived *prometheus.CounterVec
	epochsRecv    *prometheus.CounterVec
	cloneAcked    *prometheus.GaugeVec
	membersBy     *prometheus.GaugeVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		epochs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "doppel_epochs_total", Help: "Epochs committed on this node (OP side).",
		}, []string{"app"}),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "doppel_phase_seconds", Help: "Duration of checkpoint phases (PSB, RM, SRM, PRM, XFER, ACK).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"phase"}),
		pagesChanged: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "doppel_pages_changed_total", Help: "Memory pages changed between epochs.",
		}, []string{"app"}),
		bytesStored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "doppel_epoch_bytes_stored_total", Help: "Bytes written to the epoch store by checkpoints.",
		}, []string{"app"}),
		bytesSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "doppel_replication_bytes_sent_total", Help: "Bytes sent to clones, on the wire.",
		}, []string{"app", "clone"}),
		bytesReceived: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "doppel_replication_bytes_received_total", Help: "Bytes received as a clone, on the wire.",
		}, []string{"app"}),
		epochsRecv: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "doppel_epochs_received_total", Help: "Epochs received and committed as a clone.",
		}, []string{"app"}),
		cloneAcked: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "doppel_clone_acked_epoch", Help: "Newest epoch each clone acknowledged (OP side).",
		}, []string{"app", "clone"}),
		membersBy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "doppel_members", Help: "Cluster members by gossip state.",
		}, []string{"state"}),
	}
	m.reg.MustRegister(m.epochs, m.phases, m.pagesChanged, m.bytesStored, m.bytesSent,
		m.bytesReceived, m.epochsRecv, m.cloneAcked, m.membersBy,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	return mux
}

func (m *metrics) phase(p string, d time.Duration) { m.phases.WithLabelValues(p).Observe(d.Seconds()) }

func (m *metrics) epoch(app string, man store.Manifest) {
	m.epochs.WithLabelValues(app).Inc()
	m.pagesChanged.WithLabelValues(app).Add(float64(man.Pages.Changed))
	m.bytesStored.WithLabelValues(app).Add(float64(man.Bytes.Stored))
}

func (m *metrics) sent(app, clone string, s wire.Stats) {
	m.bytesSent.WithLabelValues(app, clone).Add(float64(s.WireSent))
	m.cloneAcked.WithLabelValues(app, clone).Set(float64(s.Epoch))
}

func (m *metrics) received(app string, s wire.Stats) {
	m.bytesReceived.WithLabelValues(app).Add(float64(s.WireRecv))
	m.epochsRecv.WithLabelValues(app).Inc()
}

func (m *metrics) members(ms []membership.Member) {
	counts := map[string]float64{}
	for _, s := range []membership.State{membership.StateAlive, membership.StateSuspect, membership.StateDead, membership.StateLeft} {
		counts[string(s)] = 0
	}
	for _, mem := range ms {
		counts[string(mem.State)]++
	}
	for s, c := range counts {
		m.membersBy.WithLabelValues(s).Set(c)
	}
}
