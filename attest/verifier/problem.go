package verifier

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
)

// ProblemTypePrefix prefixes the type URI of every problem this service
// returns; the suffix is a short slug such as "bad-evidence".
const ProblemTypePrefix = "urn:cloister:verifier:problem:"

// Problem is an RFC 7807 problem document (media type
// application/problem+json), the body of every 4xx and 5xx response.
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail,omitempty"`
	Instance string `json:"instance,omitempty"`
}

func (s *Server) problem(w http.ResponseWriter, r *http.Request, status int, slug, detail string) {
	if status >= 500 {
		s.cfg.Logger.Error("verifier: request failed", "status", status, "path", r.URL.Path, "detail", detail)
	}
	writeJSON(w, status, "application/problem+json", Problem{
		Type:     ProblemTypePrefix + slug,
		Title:    http.StatusText(status),
		Status:   status,
		Detail:   detail,
		Instance: r.URL.Path,
	})
}

// jsonBuffers holds response buffers (a verification response is 5-20 KiB).
var jsonBuffers = sync.Pool{New: func() any { return bytes.NewBuffer(make([]byte, 0, 16<<10)) }}

// writeJSON writes v as JSON with the given status and content type.
func writeJSON(w http.ResponseWriter, status int, contentType string, v any) {
	buf := jsonBuffers.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 64<<10 { // do not keep unusually large buffers
			buf.Reset()
			jsonBuffers.Put(buf)
		}
	}()
	if err := json.NewEncoder(buf).Encode(v); err != nil { // only plain data types are written: cannot happen
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}
