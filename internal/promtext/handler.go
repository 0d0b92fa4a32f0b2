package promtext

import (
	"compress/gzip"
	"net/http"
	"strings"
	"sync"
)

// ContentType is the text exposition format 0.0.4's media type.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Handler serves the registry's families in the text format, gzipped if
// the client accepts gzip (Prometheus does). The first call registers
// promhttp_metric_handler_errors_total{cause="encoding"|"gathering"}, the
// counter client_golang's promhttp registers, so that a sidecar's series
// stay those it had; a failed write of an answer counts as "encoding"
// (gathering cannot fail here).
func (r *Registry) Handler() http.Handler {
	r.handlerOnce.Do(func() {
		r.handlerErrs = NewCounterVec("promhttp_metric_handler_errors_total",
			"Total number of internal errors encountered by the promhttp metric handler.", "cause")
		r.handlerErrs.With("encoding")
		r.handlerErrs.With("gathering")
		r.MustRegister(r.handlerErrs)
	})
	return http.HandlerFunc(r.serveHTTP)
}

var gzipWriters = sync.Pool{New: func() any {
	w, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed)
	return w
}}

func (r *Registry) serveHTTP(w http.ResponseWriter, req *http.Request) {
	bp := r.buf()
	defer r.bufs.Put(bp)
	*bp = r.AppendText((*bp)[:0])
	h := w.Header()
	h.Set("Content-Type", ContentType)
	h.Add("Vary", "Accept-Encoding")
	var err error
	if acceptsGzip(req.Header.Get("Accept-Encoding")) {
		h.Set("Content-Encoding", "gzip")
		gz := gzipWriters.Get().(*gzip.Writer)
		gz.Reset(w)
		_, err = gz.Write(*bp)
		if cerr := gz.Close(); err == nil {
			err = cerr
		}
		gz.Reset(nil)
		gzipWriters.Put(gz)
	} else {
		_, err = w.Write(*bp)
	}
	if err != nil {
		r.handlerErrs.With("encoding").Inc()
	}
}

// acceptsGzip reports whether an Accept-Encoding value lists gzip (or *)
// with a q other than 0.
func acceptsGzip(v string) bool {
	for _, part := range strings.Split(v, ",") {
		coding, params, _ := strings.Cut(part, ";")
		coding = strings.ToLower(strings.TrimSpace(coding))
		if coding != "gzip" && coding != "*" {
			continue
		}
		q := strings.ReplaceAll(strings.ToLower(params), " ", "")
		if q == "q=0" || strings.HasPrefix(q, "q=0.0") && strings.Trim(q[len("q=0."):], "0") == "" {
			return false
		}
		return true
	}
	return false
}
