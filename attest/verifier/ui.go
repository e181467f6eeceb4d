package verifier

import (
	"embed"
	"net/http"
)

//go:embed web/index.html web/app.js web/style.css
var webFS embed.FS

// openAPI is the OpenAPI 3 description of this service; docs/verifier-api.yaml
// is a copy (a test keeps them identical).
//
//go:embed openapi.yaml
var openAPI []byte

// OpenAPI returns the OpenAPI 3 document served at /openapi.yaml.
func OpenAPI() []byte { return append([]byte(nil), openAPI...) }

// uiCSP allows only the page's own script and style: no inline code, no
// external assets, no framing.
const uiCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"

func (s *Server) serveEmbedded(w http.ResponseWriter, name, contentType string) {
	b, err := webFS.ReadFile("web/" + name)
	if err != nil { // embedded at build time: cannot happen
		http.Error(w, "missing asset", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Security-Policy", uiCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
	w.Write(b)
}

func (s *Server) handleIndex(w http.ResponseWriter, r *http.Request) {
	s.serveEmbedded(w, "index.html", "text/html; charset=utf-8")
}

func (s *Server) handleAsset(name, contentType string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { s.serveEmbedded(w, name, contentType) }
}

func (s *Server) handleOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	w.Header().Set("Cache-Control", "max-age=300")
	w.Write(openAPI)
}
