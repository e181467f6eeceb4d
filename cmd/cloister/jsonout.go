package main

import (
	"encoding/json"
	"io"
)

// jsonStyle is how a command prints JSON: the indentation of one level,
// and whether <, > and & are left as they are (nitro-cli, whose
// serde_json does not escape them) or escaped as \u003c, \u003e and
// \u0026 (encoding/json's default, which Cloister's own commands have
// always printed).
type jsonStyle struct {
	indent  string
	rawHTML bool
}

var (
	// cloisterJSON: Cloister's commands (run-enclave, describe-enclaves,
	// terminate-enclave, doctor, verify --json, kms explain).
	cloisterJSON = jsonStyle{indent: "  "}
	// nitroJSON: the image commands as nitro-cli prints them
	// (build-enclave, describe-eif, sign-eif, pcr).
	nitroJSON = jsonStyle{indent: "  ", rawHTML: true}
	// awsCLIJSON: the key service's client commands as the AWS CLI prints
	// them.
	awsCLIJSON = jsonStyle{indent: "    "}
)

// printJSON writes v to w as indented JSON in style s, ending with a
// newline. It is the one JSON printer of the cloister command.
func printJSON(w io.Writer, v any, s jsonStyle) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(!s.rawHTML)
	enc.SetIndent("", s.indent)
	return enc.Encode(v)
}
