package parenttest

import (
	"fmt"
	"io"
	"net/http"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is a parsed Prometheus text exposition.
type Metrics map[string]*dto.MetricFamily

// ParseMetrics parses the Prometheus text format (what GET /metrics serves
// without protobuf negotiation) with Prometheus' own parser.
func ParseMetrics(r io.Reader) (Metrics, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse the metrics: %w", err)
	}
	return Metrics(fams), nil
}

// ScrapeMetrics GETs url with hc, checks the answer is 200 in the text
// format, and parses it.
func ScrapeMetrics(t testing.TB, hc *http.Client, url string) Metrics {
	t.Helper()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		t.Fatalf("scrape %s: %s: %s", url, resp.Status, b)
	}
	if ct := resp.Header.Get("Content-Type"); expfmt.ResponseFormat(resp.Header).FormatType() != expfmt.TypeTextPlain {
		t.Fatalf("scrape %s: Content-Type %q is not the Prometheus text format", url, ct)
	}
	m, err := ParseMetrics(resp.Body)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	return m
}

// Value returns the value of the counter, gauge or untyped sample name
// whose labels include every label given, or of a histogram's sample count;
// ok is false when there is no such sample.
func (m Metrics) Value(name string, labels map[string]string) (v float64, ok bool) {
	f := m[name]
	if f == nil {
		return 0, false
	}
next:
	for _, s := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range s.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, want := range labels {
			if have[k] != want {
				continue next
			}
		}
		switch {
		case s.Counter != nil:
			return s.GetCounter().GetValue(), true
		case s.Gauge != nil:
			return s.GetGauge().GetValue(), true
		case s.Histogram != nil:
			return float64(s.GetHistogram().GetSampleCount()), true
		case s.Untyped != nil:
			return s.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}
