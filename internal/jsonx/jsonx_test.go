package jsonx

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCheck(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		opts   Options
		want   error  // nil: accepted
		path   string // expected Error.Path when rejected
		offset int    // expected Error.Offset when rejected (-1: any)
	}{
		{name: "object", in: ` {"a": 1, "b": [true, false, null, "x", -0.5e+3], "c": {}} `},
		{name: "scalar", in: `"just a string"`},
		{name: "escapes", in: `{"\u00e9\n\t\"\\\/": "\ud83d\ude00"}`},
		{name: "utf8", in: `{"é": "😀", "É": 1}`},
		{name: "same name in sibling objects", in: `[{"a":1},{"a":2}]`},
		{name: "same name at different depths", in: `{"a":{"a":{"a":1}}}`},
		{name: "case variants allowed without FoldedNames", in: `{"Effect":"Deny","effect":"Allow"}`},

		{name: "exact duplicate", in: `{"Effect":"Deny","Effect":"Allow"}`, want: ErrDuplicateName, path: "Effect", offset: 17},
		{name: "duplicate written with an escape", in: `{"Effect":"Deny","\u0045ffect":"Allow"}`, want: ErrDuplicateName, path: "Effect", offset: 17},
		{name: "nested duplicate", in: `{"Statement":[{"Sid":"a"},{"Sid":"b","Condition":{"StringEquals":{"k:a":"1","k:a":"2"}}}]}`, want: ErrDuplicateName,
			path: "Statement[1].Condition.StringEquals.k:a", offset: -1},
		{name: "case collision", in: `{"Effect":"Deny","effect":"Allow"}`, opts: Options{FoldedNames: true}, want: ErrNameCase, path: "effect", offset: 17},
		{name: "Kelvin sign folds to k", in: `{"k":1,"\u212a":2}`, opts: Options{FoldedNames: true}, want: ErrNameCase, path: "\u212a", offset: -1},
		{name: "long s folds to s", in: `{"Sid":1,"ſid":2}`, opts: Options{FoldedNames: true}, want: ErrNameCase, path: "ſid", offset: -1},
		{name: "many members, duplicate late", in: manyMembers(40, "m7"), want: ErrDuplicateName, path: "m7", offset: -1},
		{name: "many members, case collision late", in: manyMembers(40, "M7"), opts: Options{FoldedNames: true}, want: ErrNameCase, path: "M7", offset: -1},

		{name: "empty", in: ``, want: ErrMalformed, offset: 0},
		{name: "trailing data", in: `{} {}`, want: ErrMalformed, offset: 3},
		{name: "trailing comma", in: `{"a":1,}`, want: ErrMalformed, offset: 7},
		{name: "unquoted name", in: `{a:1}`, want: ErrMalformed, offset: 1},
		{name: "single quotes", in: `{'a':1}`, want: ErrMalformed, offset: 1},
		{name: "leading zero", in: `01`, want: ErrMalformed, offset: 1},
		{name: "bare point", in: `1.`, want: ErrMalformed, offset: -1},
		{name: "bad literal", in: `tru`, want: ErrMalformed, offset: 0},
		{name: "control character", in: "\"a\x01\"", want: ErrMalformed, offset: 2},
		{name: "invalid UTF-8", in: "{\"a\xff\":1}", want: ErrMalformed, offset: 3},
		{name: "lone high surrogate", in: `"\ud800"`, want: ErrMalformed, offset: 1},
		{name: "lone low surrogate", in: `"\udc00x"`, want: ErrMalformed, offset: 1},
		{name: "high surrogate then non-low", in: `"\ud800\u0041"`, want: ErrMalformed, offset: 1},
		{name: "bad escape", in: `"\x"`, want: ErrMalformed, offset: 1},
		{name: "bad hex", in: `"\u00g0"`, want: ErrMalformed, offset: 1},
		{name: "unterminated", in: `{"a":"b`, want: ErrMalformed, offset: -1},
		{name: "too deep", in: strings.Repeat("[", MaxDepth+1) + strings.Repeat("]", MaxDepth+1), want: ErrMalformed, offset: MaxDepth},
		{name: "deep enough", in: strings.Repeat("[", MaxDepth) + strings.Repeat("]", MaxDepth)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Check([]byte(tc.in), tc.opts)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			var e *Error
			if !errors.Is(err, tc.want) || !errors.Is(err, ErrMalformed) || !errors.As(err, &e) {
				t.Fatalf("Check error %v, want %v", err, tc.want)
			}
			if tc.path != "" && e.Path != tc.path {
				t.Errorf("path %q, want %q (%v)", e.Path, tc.path, err)
			}
			if tc.offset >= 0 && e.Offset != tc.offset {
				t.Errorf("offset %d, want %d (%v)", e.Offset, tc.offset, err)
			}
		})
	}
}

// manyMembers is an object of n members m0..m(n-1) followed by extra.
func manyMembers(n int, extra string) string {
	var b strings.Builder
	b.WriteString("{")
	for i := range n {
		b.WriteString(`"m` + string(rune('0'+i%10)) + strings.Repeat("x", i/10) + `":1,`)
	}
	b.WriteString(`"` + extra + `":2}`)
	return b.String()
}

type inner struct {
	KeyEncryptionAlgorithm string
	Doc                    []byte `json:"AttestationDocument"`
}

type request struct {
	KeyID     string            `json:"KeyId"`
	Context   map[string]string `json:"EncryptionContext"`
	Recipient *inner            `json:"Recipient"`
	Tokens    []string          `json:"GrantTokens"`
	Raw       json.RawMessage   `json:"Raw"`
	Ignored   string            `json:"-"`
	embedded
}

type embedded struct {
	DryRun bool
}

func TestUnmarshal(t *testing.T) {
	tests := []struct {
		name string
		in   string
		opts Options
		want request
		err  error
	}{
		{name: "exact names", in: `{"KeyId":"k","EncryptionContext":{"a":"1","A":"2"},"Recipient":{"KeyEncryptionAlgorithm":"RSA","AttestationDocument":"AQI="},"DryRun":true,"Unknown":{"x":1}}`,
			want: request{KeyID: "k", Context: map[string]string{"a": "1", "A": "2"}, Recipient: &inner{KeyEncryptionAlgorithm: "RSA", Doc: []byte{1, 2}}, embedded: embedded{DryRun: true}}},
		{name: "raw member is opaque", in: `{"Raw":{"keyid":1,"KeyId":2}}`, want: request{Raw: json.RawMessage(`{"keyid":1,"KeyId":2}`)}},
		{name: "miscased field", in: `{"keyid":"k"}`, err: ErrNameCase},
		{name: "miscased nested field", in: `{"Recipient":{"attestationdocument":"AQI="}}`, err: ErrNameCase},
		{name: "miscased promoted field", in: `{"dryrun":true}`, err: ErrNameCase},
		{name: "field and miscased copy", in: `{"KeyId":"a","KEYID":"b"}`, err: ErrNameCase},
		{name: "duplicate field", in: `{"KeyId":"a","KeyId":"b"}`, err: ErrDuplicateName},
		{name: "duplicate context key", in: `{"EncryptionContext":{"a":"1","a":"2"}}`, err: ErrDuplicateName},
		{name: "case-colliding context keys with FoldedNames", in: `{"EncryptionContext":{"a":"1","A":"2"}}`, opts: Options{FoldedNames: true}, err: ErrNameCase},
		{name: "tag-ignored field is unknown", in: `{"Ignored":"x"}`, opts: Options{DisallowUnknownFields: true}, err: ErrUnknownField},
		{name: "unknown field", in: `{"Nope":1}`, opts: Options{DisallowUnknownFields: true}, err: ErrUnknownField},
		{name: "type mismatch", in: `{"KeyId":1}`, err: ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got request
			err := Unmarshal([]byte(tc.in), &got, tc.opts)
			if tc.err != nil {
				if !errors.Is(err, tc.err) || !errors.Is(err, ErrMalformed) {
					t.Fatalf("Unmarshal error %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Unmarshal: %v", err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(request{})); diff != "" {
				t.Errorf("decoded (-want +got):\n%s", diff)
			}
		})
	}
	if err := Unmarshal([]byte(`{}`), request{}, Options{}); !errors.Is(err, ErrMalformed) {
		t.Errorf("non-pointer target: %v", err)
	}
}

// TestMessage checks that an error says what and where.
func TestMessage(t *testing.T) {
	err := Check([]byte(`{"Statement":[{"Effect":"Deny","effect":"Allow"}]}`), Options{FoldedNames: true})
	want := `jsonx: malformed json: members "Effect" and "effect" differ only in case at Statement[0].effect (offset 31)`
	if err == nil || err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}

// decoderNames walks data with encoding/json's tokenizer and reports
// whether some object has two members equal after unescaping (exactly, or
// under case folding when folded).
func decoderNames(data []byte, folded bool) bool {
	d := json.NewDecoder(strings.NewReader(string(data)))
	type frame struct {
		object bool
		names  map[string]bool
		key    bool // next token in this object is a name
	}
	var stack []*frame
	for {
		tok, err := d.Token()
		if err != nil {
			return false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.object && top.key {
			if name, ok := tok.(string); ok {
				if folded {
					name = fold(name)
				}
				if top.names[name] {
					return true
				}
				top.names[name] = true
				top.key = false
				continue
			}
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{object: true, names: map[string]bool{}, key: true})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		if len(stack) > 0 && stack[len(stack)-1].object {
			stack[len(stack)-1].key = true
		}
		if len(stack) == 0 {
			return false
		}
	}
}

func FuzzCheck(f *testing.F) {
	for _, s := range []string{
		`{"Version":"2012-10-17","Statement":[{"Sid":"a","Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:*","Resource":"*"}]}`,
		`{"Effect":"Deny","effect":"Allow"}`,
		`{"Effect":"Deny","Effect":"Allow"}`,
		`{"\u0045ffect":1,"Effect":2}`,
		`{"KeyId":"alias/x","CiphertextBlob":"AQID","EncryptionContext":{"a":"1","A":"2"}}`,
		`[1, -0.5e10, true, null, "\ud83d\ude00"]`,
		`"\ud800"`, "\"\xff\"", `{"a":{"b":[{"c":{}}]}}`, `01`, `{"k":1,"\u212a":2}`,
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, folded bool) {
		err := Check(data, Options{FoldedNames: folded})
		valid := json.Valid(data)
		if err == nil {
			// Accepted: encoding/json agrees it is JSON, and no object
			// repeats a name (under folding when asked).
			if !valid {
				t.Fatalf("Check accepted %q, which encoding/json rejects", data)
			}
			if decoderNames(data, folded) {
				t.Fatalf("Check accepted %q, which repeats a member name", data)
			}
			// Unmarshal into any then agrees with encoding/json.
			var v, w any
			err := Unmarshal(data, &v, Options{FoldedNames: folded})
			if werr := json.Unmarshal(data, &w); (err == nil) != (werr == nil) {
				t.Fatalf("on %q, Check accepted; Unmarshal: %v; encoding/json: %v", data, err, werr)
			}
			if diff := cmp.Diff(w, v); diff != "" {
				t.Fatalf("on %q, Unmarshal and encoding/json differ (-json +jsonx):\n%s", data, diff)
			}
			return
		}
		if !errors.Is(err, ErrMalformed) {
			t.Fatalf("error %v does not wrap ErrMalformed", err)
		}
		var e *Error
		if !errors.As(err, &e) || e.Offset < 0 || e.Offset > len(data) {
			t.Fatalf("error %v: offset out of range", err)
		}
		// Refused for a name (possibly before the end of the input): if the
		// input is JSON, it does repeat a name.
		if errors.Is(err, ErrDuplicateName) || errors.Is(err, ErrNameCase) {
			if valid && !decoderNames(data, folded) {
				t.Fatalf("Check refused %q for a repeated name it does not have: %v", data, err)
			}
		}
	})
}

// FuzzUnmarshal decodes into a request struct: what Unmarshal accepts,
// encoding/json decodes to the same value, and every top-level member
// name that matches a field ignoring case matches it exactly.
func FuzzUnmarshal(f *testing.F) {
	for _, s := range []string{
		`{"KeyId":"k","EncryptionContext":{"a":"1"},"Recipient":{"AttestationDocument":"AQI="},"DryRun":true}`,
		`{"keyid":"k"}`, `{"KeyId":"a","KEYID":"b"}`, `{"Raw":{"x":1,"x":2}}`, `{"GrantTokens":["a","b"],"Unknown":[{}]}`,
	} {
		f.Add([]byte(s))
	}
	names := fieldsOf(reflect.TypeFor[request]())
	f.Fuzz(func(t *testing.T, data []byte) {
		var got, want request
		if err := Unmarshal(data, &got, Options{}); err != nil {
			return
		}
		if err := json.Unmarshal(data, &want); err != nil {
			t.Fatalf("Unmarshal accepted %q, encoding/json refuses it: %v", data, err)
		}
		if diff := cmp.Diff(want, got, cmp.AllowUnexported(request{})); diff != "" {
			t.Fatalf("on %q (-json +jsonx):\n%s", data, diff)
		}
		var top map[string]json.RawMessage
		if json.Unmarshal(data, &top) == nil {
			for name := range top {
				if exact, ok := names.folded[fold(name)]; ok && exact != name {
					t.Fatalf("Unmarshal accepted member %q for field %q", name, exact)
				}
			}
		}
	})
}

// decryptBody is a Decrypt request with a Recipient, the key service's
// largest common request.
func decryptBody() []byte {
	b, _ := json.Marshal(map[string]any{
		"CiphertextBlob":    make([]byte, 200),
		"EncryptionContext": map[string]string{"app": "demo", "tenant": "t-1"},
		"Recipient":         map[string]any{"AttestationDocument": make([]byte, 4500), "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256"},
	})
	return b
}

type decryptRequest struct {
	CiphertextBlob    []byte
	EncryptionContext map[string]string
	Recipient         *inner
}

// BenchmarkUnmarshal is the strict decode of a Decrypt request (checks
// and encoding/json); BenchmarkStdlibUnmarshal is encoding/json alone.
func BenchmarkUnmarshal(b *testing.B) {
	body := decryptBody()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		var r decryptRequest
		if err := Unmarshal(body, &r, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkStdlibUnmarshal(b *testing.B) {
	body := decryptBody()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		var r decryptRequest
		if err := json.Unmarshal(body, &r); err != nil {
			b.Fatal(err)
		}
	}
}
