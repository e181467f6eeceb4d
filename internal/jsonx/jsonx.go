package jsonx

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// MaxDepth is the deepest nesting of arrays and objects accepted.
const MaxDepth = 32

// Sentinel errors. Every error this package returns wraps ErrMalformed and,
// for the failures below, one of the others.
var (
	ErrMalformed     = errors.New("jsonx: malformed json")
	ErrDuplicateName = errors.New("jsonx: duplicate object member name")
	ErrNameCase      = errors.New("jsonx: object member names differ only in case")
	ErrUnknownField  = errors.New("jsonx: unknown object member")
)

// Error is a rejected input: where, and why.
type Error struct {
	// Offset is the byte offset in the input where the problem starts.
	Offset int
	// Path locates the value, e.g. `Statement[1].Effect` ("" for the top).
	Path string
	// Msg says what is wrong.
	Msg string
	// Err is one of the sentinels other than ErrMalformed, or nil for a
	// syntax or type error.
	Err error
}

// Error formats the failure with its location.
func (e *Error) Error() string {
	where := fmt.Sprintf("at offset %d", e.Offset)
	if e.Path != "" {
		where = fmt.Sprintf("at %s (offset %d)", e.Path, e.Offset)
	}
	return fmt.Sprintf("%v: %s %s", ErrMalformed, e.Msg, where)
}

// Unwrap returns ErrMalformed and the specific sentinel, if any.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrMalformed}
	}
	return []error{ErrMalformed, e.Err}
}

// Options select checks beyond the ones always made.
type Options struct {
	// FoldedNames rejects two members of one object whose names differ
	// only in case (exact duplicates are always rejected).
	FoldedNames bool
	// DisallowUnknownFields makes Unmarshal reject a member of an object
	// decoded into a struct that names none of the struct's fields.
	DisallowUnknownFields bool
}

// Check reports whether data is exactly one JSON value that passes the
// package's checks (see the package comment) under o; the struct-field
// checks do not apply.
func Check(data []byte, o Options) error {
	s := scanner{data: data, opts: o}
	return s.document(nil)
}

// Unmarshal checks data as Check does, with the struct-field checks for v's
// type (a member that names a field only ignoring case is refused, as is,
// with o.DisallowUnknownFields, one that names no field), then decodes it
// into v with encoding/json. v must be a non-nil pointer.
func Unmarshal(data []byte, v any, o Options) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return &Error{Msg: fmt.Sprintf("cannot decode into %T: want a non-nil pointer", v)}
	}
	s := scanner{data: data, opts: o}
	if err := s.document(rv.Type()); err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		e := &Error{Msg: err.Error()}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			e.Offset, e.Path = int(te.Offset), te.Field
			e.Msg = fmt.Sprintf("a JSON %s cannot be decoded into a Go %s", te.Value, te.Type)
		}
		return e
	}
	return nil
}

// scanner validates one document in a single pass.
type scanner struct {
	data  []byte
	pos   int
	opts  Options
	depth int
	path  []string // member names and [index] segments above pos
}

func (s *scanner) fail(sentinel error, format string, args ...any) *Error {
	return s.failAt(s.pos, sentinel, format, args...)
}

func (s *scanner) failAt(offset int, sentinel error, format string, args ...any) *Error {
	return &Error{Offset: offset, Path: s.pathString(), Msg: fmt.Sprintf(format, args...), Err: sentinel}
}

func (s *scanner) pathString() string {
	var b strings.Builder
	for _, p := range s.path {
		if b.Len() > 0 && !strings.HasPrefix(p, "[") {
			b.WriteByte('.')
		}
		b.WriteString(p)
	}
	return b.String()
}

func (s *scanner) document(t reflect.Type) error {
	s.skipSpace()
	if err := s.value(t); err != nil {
		return err
	}
	s.skipSpace()
	if s.pos != len(s.data) {
		return s.fail(nil, "unexpected data after the JSON value")
	}
	return nil
}

func (s *scanner) skipSpace() {
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// value checks the value at pos; t is the Go type it decodes into (nil
// when unknown or opaque).
func (s *scanner) value(t reflect.Type) error {
	if s.pos >= len(s.data) {
		return s.fail(nil, "unexpected end of input, want a value")
	}
	switch c := s.data[s.pos]; {
	case c == '{':
		return s.object(goType(t))
	case c == '[':
		return s.array(goType(t))
	case c == '"':
		_, err := s.str(false)
		return err
	case c == '-' || ('0' <= c && c <= '9'):
		return s.number()
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	default:
		return s.fail(nil, "invalid character %q, want a value", c)
	}
}

func (s *scanner) literal(word string) error {
	if !bytes.HasPrefix(s.data[s.pos:], []byte(word)) {
		return s.fail(nil, "invalid literal, want %s", word)
	}
	s.pos += len(word)
	return nil
}

// number checks -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() error {
	start := s.pos
	digits := func() int {
		n := 0
		for s.pos < len(s.data) && '0' <= s.data[s.pos] && s.data[s.pos] <= '9' {
			s.pos++
			n++
		}
		return n
	}
	if s.data[s.pos] == '-' {
		s.pos++
	}
	if s.pos < len(s.data) && s.data[s.pos] == '0' {
		s.pos++
	} else if digits() == 0 {
		return s.fail(nil, "invalid number %q", s.data[start:s.pos])
	}
	if s.pos < len(s.data) && s.data[s.pos] == '.' {
		s.pos++
		if digits() == 0 {
			return s.fail(nil, "invalid number %q: no digits after the decimal point", s.data[start:s.pos])
		}
	}
	if s.pos < len(s.data) && (s.data[s.pos] == 'e' || s.data[s.pos] == 'E') {
		s.pos++
		if s.pos < len(s.data) && (s.data[s.pos] == '+' || s.data[s.pos] == '-') {
			s.pos++
		}
		if digits() == 0 {
			return s.fail(nil, "invalid number %q: no exponent digits", s.data[start:s.pos])
		}
	}
	return nil
}

// str checks the string at pos and, when decode, returns its unescaped
// value.
func (s *scanner) str(decode bool) (string, error) {
	start := s.pos
	s.pos++ // opening quote
	// Fast path: printable ASCII without escapes.
	i := s.pos
	for i < len(s.data) {
		c := s.data[i]
		if c == '"' || c == '\\' || c < 0x20 || c >= utf8.RuneSelf {
			break
		}
		i++
	}
	if i < len(s.data) && s.data[i] == '"' {
		s.pos = i + 1
		if decode {
			return string(s.data[start+1 : i]), nil
		}
		return "", nil
	}
	var b []byte
	if decode {
		b = append(b, s.data[start+1:i]...)
	}
	s.pos = i
	for {
		if s.pos >= len(s.data) {
			s.pos = start
			return "", s.fail(nil, "unterminated string")
		}
		c := s.data[s.pos]
		switch {
		case c == '"':
			s.pos++
			return string(b), nil
		case c < 0x20:
			return "", s.fail(nil, "control character %#02x in a string", c)
		case c == '\\':
			r, err := s.escape()
			if err != nil {
				return "", err
			}
			if decode {
				b = utf8.AppendRune(b, r)
			}
		case c < utf8.RuneSelf:
			if decode {
				b = append(b, c)
			}
			s.pos++
		default:
			r, n := utf8.DecodeRune(s.data[s.pos:])
			if r == utf8.RuneError && n <= 1 {
				return "", s.fail(nil, "invalid UTF-8 in a string")
			}
			if decode {
				b = append(b, s.data[s.pos:s.pos+n]...)
			}
			s.pos += n
		}
	}
}

// escape decodes the escape sequence at pos (a backslash), including a
// UTF-16 surrogate pair, and refuses lone surrogates.
func (s *scanner) escape() (rune, error) {
	if s.pos+1 >= len(s.data) {
		return 0, s.fail(nil, "unterminated escape sequence")
	}
	c := s.data[s.pos+1]
	var r rune
	switch c {
	case '"', '\\', '/':
		r = rune(c)
	case 'b':
		r = '\b'
	case 'f':
		r = '\f'
	case 'n':
		r = '\n'
	case 'r':
		r = '\r'
	case 't':
		r = '\t'
	case 'u':
		return s.unicodeEscape()
	default:
		return 0, s.fail(nil, "invalid escape sequence \\%c", c)
	}
	s.pos += 2
	return r, nil
}

// unicodeEscape decodes the \uXXXX escape at pos.
func (s *scanner) unicodeEscape() (rune, error) {
	r, ok := s.hex4(s.pos + 2)
	if !ok {
		return 0, s.fail(nil, "invalid \\u escape")
	}
	switch {
	case utf16.IsSurrogate(r) && r < 0xdc00: // high surrogate: a low one must follow
		if s.pos+7 < len(s.data) && s.data[s.pos+6] == '\\' && s.data[s.pos+7] == 'u' {
			if lo, ok := s.hex4(s.pos + 8); ok && 0xdc00 <= lo && lo <= 0xdfff {
				s.pos += 12
				return utf16.DecodeRune(r, lo), nil
			}
		}
		return 0, s.fail(nil, "lone UTF-16 surrogate \\u%04x", r)
	case utf16.IsSurrogate(r):
		return 0, s.fail(nil, "lone UTF-16 surrogate \\u%04x", r)
	}
	s.pos += 6
	return r, nil
}

func (s *scanner) hex4(at int) (rune, bool) {
	if at+4 > len(s.data) {
		return 0, false
	}
	var r rune
	for _, c := range s.data[at : at+4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

func (s *scanner) enter() error {
	s.depth++
	if s.depth > MaxDepth {
		return s.fail(nil, "nesting deeper than %d", MaxDepth)
	}
	return nil
}

// member is a name seen in the current object.
type member struct{ name, folded string }

// smallObject is the number of members compared pairwise; larger objects
// index their names in a map.
const smallObject = 16

func (s *scanner) object(t reflect.Type) error {
	if err := s.enter(); err != nil {
		return err
	}
	var (
		fields  *structFields
		elem    reflect.Type
		seen    []member
		byName  map[string]string // name or folded name -> first name
		foldAll = s.opts.FoldedNames
	)
	if t != nil {
		switch t.Kind() {
		case reflect.Struct:
			fields = fieldsOf(t)
		case reflect.Map:
			elem = t.Elem()
		}
	}
	s.pos++ // {
	s.skipSpace()
	if s.pos < len(s.data) && s.data[s.pos] == '}' {
		s.pos++
		s.depth--
		return nil
	}
	for {
		if s.pos >= len(s.data) {
			return s.fail(nil, "unexpected end of input in an object")
		}
		if s.data[s.pos] != '"' {
			return s.fail(nil, "invalid character %q, want a member name string", s.data[s.pos])
		}
		nameAt := s.pos
		name, err := s.str(true)
		if err != nil {
			return err
		}
		folded := ""
		if foldAll {
			folded = fold(name)
		}
		// Duplicate and case checks against the earlier members.
		key := name
		if foldAll {
			key = folded
		}
		first, dup := "", false
		if byName != nil {
			first, dup = byName[key]
		} else {
			for _, m := range seen {
				if m.name == name || (foldAll && m.folded == folded) {
					first, dup = m.name, true
					break
				}
			}
		}
		if dup {
			s.path = append(s.path, name)
			if first == name {
				return s.failAt(nameAt, ErrDuplicateName, "member %q appears twice", name)
			}
			return s.failAt(nameAt, ErrNameCase, "members %q and %q differ only in case", first, name)
		}
		if byName != nil {
			byName[key] = name
		} else {
			seen = append(seen, member{name, folded})
			if len(seen) > smallObject {
				byName = make(map[string]string, 2*len(seen))
				for _, m := range seen {
					k := m.name
					if foldAll {
						k = m.folded
					}
					byName[k] = m.name
				}
			}
		}
		vt := elem
		if fields != nil {
			ft, ok := fields.exact[name]
			if !ok {
				if want, ok := fields.folded[fold(name)]; ok {
					s.path = append(s.path, name)
					return s.failAt(nameAt, ErrNameCase, "member %q must be spelled %q (names are case-sensitive)", name, want)
				}
				if s.opts.DisallowUnknownFields {
					s.path = append(s.path, name)
					return s.failAt(nameAt, ErrUnknownField, "unknown member %q", name)
				}
			}
			vt = ft
		}
		s.skipSpace()
		if s.pos >= len(s.data) || s.data[s.pos] != ':' {
			return s.fail(nil, "want ':' after member name %q", name)
		}
		s.pos++
		s.skipSpace()
		s.path = append(s.path, name)
		if err := s.value(vt); err != nil {
			return err
		}
		s.path = s.path[:len(s.path)-1]
		s.skipSpace()
		if s.pos >= len(s.data) {
			return s.fail(nil, "unexpected end of input in an object")
		}
		switch s.data[s.pos] {
		case ',':
			s.pos++
			s.skipSpace()
		case '}':
			s.pos++
			s.depth--
			return nil
		default:
			return s.fail(nil, "invalid character %q after an object member, want ',' or '}'", s.data[s.pos])
		}
	}
}

func (s *scanner) array(t reflect.Type) error {
	if err := s.enter(); err != nil {
		return err
	}
	var elem reflect.Type
	if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
		elem = t.Elem()
	}
	s.pos++ // [
	s.skipSpace()
	if s.pos < len(s.data) && s.data[s.pos] == ']' {
		s.pos++
		s.depth--
		return nil
	}
	for i := 0; ; i++ {
		s.path = append(s.path, "["+strconv.Itoa(i)+"]")
		if err := s.value(elem); err != nil {
			return err
		}
		s.path = s.path[:len(s.path)-1]
		s.skipSpace()
		if s.pos >= len(s.data) {
			return s.fail(nil, "unexpected end of input in an array")
		}
		switch s.data[s.pos] {
		case ',':
			s.pos++
			s.skipSpace()
		case ']':
			s.pos++
			s.depth--
			return nil
		default:
			return s.fail(nil, "invalid character %q after an array element, want ',' or ']'", s.data[s.pos])
		}
	}
}

var (
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// goType returns the type whose structure a JSON value decoding into t is
// checked against: t without pointers, or nil when t decodes itself (a
// json.Unmarshaler such as json.RawMessage, a TextUnmarshaler) or is an
// interface.
func goType(t reflect.Type) reflect.Type {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() == reflect.Interface {
		return nil
	}
	if pt := reflect.PointerTo(t); pt.Implements(jsonUnmarshaler) || pt.Implements(textUnmarshaler) {
		return nil
	}
	return t
}

// structFields are the JSON member names of a struct type, as
// encoding/json derives them, with the type each decodes into.
type structFields struct {
	exact  map[string]reflect.Type
	folded map[string]string // fold(name) -> name
}

var fieldCache sync.Map // reflect.Type -> *structFields

func fieldsOf(t reflect.Type) *structFields {
	if f, ok := fieldCache.Load(t); ok {
		return f.(*structFields)
	}
	f := &structFields{exact: map[string]reflect.Type{}, folded: map[string]string{}}
	collectFields(t, f, map[reflect.Type]bool{})
	for name := range f.exact {
		f.folded[fold(name)] = name
	}
	fieldCache.Store(t, f)
	return f
}

// collectFields adds t's JSON fields to f: exported fields under their tag
// name or Go name ("-" skips a field); fields of an untagged embedded
// struct are promoted unless a shallower field has the same name.
func collectFields(t reflect.Type, f *structFields, visiting map[reflect.Type]bool) {
	if visiting[t] {
		return
	}
	visiting[t] = true
	defer delete(visiting, t)
	var embedded []reflect.Type
	for i := range t.NumField() {
		sf := t.Field(i)
		tag := sf.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if sf.Anonymous && name == "" {
			et := sf.Type
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				embedded = append(embedded, et)
				continue
			}
		}
		if !sf.IsExported() {
			continue
		}
		if name == "" {
			name = sf.Name
		}
		if _, ok := f.exact[name]; !ok {
			f.exact[name] = sf.Type
		}
	}
	for _, et := range embedded {
		collectFields(et, f, visiting)
	}
}

// fold maps a name to a canonical case, so that fold(a) == fold(b) exactly
// when bytes.EqualFold(a, b): each rune becomes the smallest rune of its
// Unicode simple-folding orbit (as encoding/json matches struct fields).
func fold(name string) string {
	ascii := true
	for i := 0; i < len(name); i++ {
		if c := name[i]; c >= utf8.RuneSelf || ('a' <= c && c <= 'z') {
			ascii = false
			break
		}
	}
	if ascii {
		return name
	}
	b := make([]byte, 0, len(name))
	for _, r := range name {
		if r < utf8.RuneSelf {
			if 'a' <= r && r <= 'z' {
				r -= 'a' - 'A'
			}
			b = append(b, byte(r))
			continue
		}
		b = utf8.AppendRune(b, foldRune(r))
	}
	return string(b)
}

// foldRune returns the smallest rune in r's simple-folding orbit.
func foldRune(r rune) rune {
	for {
		r2 := unicode.SimpleFold(r)
		if r2 <= r {
			return r2
		}
		r = r2
	}
}
