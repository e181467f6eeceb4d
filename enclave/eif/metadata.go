package eif

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// MaxCustomMetadata is the largest user metadata file nitro-cli accepts.
const MaxCustomMetadata = 4096

// Metadata is the JSON content of the metadata section (nitro's
// EifIdentityInfo).
type Metadata struct {
	ImageName      string          `json:"ImageName"`
	ImageVersion   string          `json:"ImageVersion"`
	BuildMetadata  BuildMetadata   `json:"BuildMetadata"`
	DockerInfo     json.RawMessage `json:"DockerInfo"`     // image description (JSON); null when absent
	CustomMetadata json.RawMessage `json:"CustomMetadata"` // user JSON; null when absent
}

// BuildMetadata describes the build (nitro's EifBuildInfo).
type BuildMetadata struct {
	BuildTime        string `json:"BuildTime"` // RFC 3339
	BuildTool        string `json:"BuildTool"`
	BuildToolVersion string `json:"BuildToolVersion"`
	OperatingSystem  string `json:"OperatingSystem"`
	KernelVersion    string `json:"KernelVersion"`
}

// MarshalMetadata encodes m as nitro does (compact, keys in struct order,
// no HTML escaping). Absent DockerInfo or CustomMetadata are null; present
// ones must be valid JSON and are compacted.
func MarshalMetadata(m *Metadata) ([]byte, error) {
	c := *m
	for _, f := range []*json.RawMessage{&c.DockerInfo, &c.CustomMetadata} {
		if len(bytes.TrimSpace(*f)) == 0 {
			*f = json.RawMessage("null")
			continue
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, *f); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrMetadata, err)
		}
		*f = buf.Bytes()
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&c); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMetadata, err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// ParseMetadata decodes a metadata section. It requires a JSON object with
// the BuildMetadata object present; unknown keys are ignored.
func ParseMetadata(b []byte) (*Metadata, error) {
	var raw struct {
		Metadata
		BuildMetadata *BuildMetadata `json:"BuildMetadata"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMetadata, err)
	}
	if raw.BuildMetadata == nil {
		return nil, fmt.Errorf("%w: no BuildMetadata", ErrMetadata)
	}
	m := raw.Metadata
	m.BuildMetadata = *raw.BuildMetadata
	return &m, nil
}
