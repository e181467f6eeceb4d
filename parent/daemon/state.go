package daemon

import (
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/cloister/cloister/parent"
)

// State is an enclave's state in the daemon and its monitor. Its text
// form, nitro-cli's and Cloister's state names (parent.StateRunning …), is
// what the API, the monitor's control socket and exit.json carry.
type State uint8

// The states an enclave goes through, in order (TERMINATING may be
// skipped). The zero State is no state.
const (
	StateStarting State = iota + 1
	StateRunning
	StateTerminating
	StateExited
)

var stateNames = [...]string{
	StateStarting:    parent.StateStarting,
	StateRunning:     parent.StateRunning,
	StateTerminating: parent.StateTerminating,
	StateExited:      parent.StateExited,
}

// String returns the state's API name ("RUNNING"), or "" for the zero State.
func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// MarshalText encodes the API name.
func (s State) MarshalText() ([]byte, error) {
	if s == 0 || int(s) >= len(stateNames) {
		return nil, fmt.Errorf("daemon: no name for enclave state %d", uint8(s))
	}
	return []byte(s.String()), nil
}

// UnmarshalText decodes an API name.
func (s *State) UnmarshalText(b []byte) error {
	for i, n := range stateNames {
		if i > 0 && n == string(b) {
			*s = State(i)
			return nil
		}
	}
	return fmt.Errorf("daemon: unknown enclave state %q", b)
}

// pcrSet holds an image's measured PCRs by index, as bytes. It is hex only
// in JSON (monitor.json: {"0": "<hex>", …}, the layout of every format
// version).
type pcrSet map[int][]byte

// MarshalJSON encodes the PCRs as lower-case hex.
func (p pcrSet) MarshalJSON() ([]byte, error) {
	h := make(map[int]string, len(p))
	for i, b := range p {
		h[i] = hex.EncodeToString(b)
	}
	return json.Marshal(h)
}

// UnmarshalJSON decodes PCRs written by MarshalJSON.
func (p *pcrSet) UnmarshalJSON(b []byte) error {
	var h map[int]string
	if err := json.Unmarshal(b, &h); err != nil {
		return err
	}
	out := make(pcrSet, len(h))
	for i, s := range h {
		v, err := hex.DecodeString(s)
		if err != nil {
			return fmt.Errorf("daemon: PCR%d: %w", i, err)
		}
		out[i] = v
	}
	*p = out
	return nil
}
