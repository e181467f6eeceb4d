package cms

import (
	"fmt"
)

// BER limits. A CiphertextForRecipient from AWS is at most 6144 bytes; the
// limits leave generous room while keeping a hostile input cheap to reject.
const (
	// MaxInput is the largest blob Parse accepts.
	MaxInput = 1 << 20
	// maxDepth bounds the nesting of constructed encodings.
	maxDepth = 24
	// maxElements bounds the total number of TLVs decoded from one input.
	maxElements = 1 << 14
)

// BER identifier classes.
const (
	classUniversal   = 0
	classApplication = 1
	classContext     = 2
	classPrivate     = 3
)

// Universal tag numbers used here.
const (
	tagInteger     = 2
	tagOctetString = 4
	tagNull        = 5
	tagOID         = 6
	tagSequence    = 16
	tagSet         = 17
)

// element is one decoded BER TLV. Primitive elements carry their content
// bytes; constructed elements carry their children (definite or indefinite
// length alike).
type element struct {
	class       int
	constructed bool
	tag         int
	content     []byte     // primitive only
	children    []*element // constructed only
}

func (e *element) is(class, tag int) bool { return e.class == class && e.tag == tag }

// berDecoder decodes one BER value tree with bounds on depth and element count.
type berDecoder struct {
	elements int
}

// parseBER decodes exactly one BER element from b; trailing bytes are an error.
func parseBER(b []byte) (*element, error) {
	var d berDecoder
	e, rest, err := d.decode(b, 0)
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes after the ContentInfo", ErrMalformed, len(rest))
	}
	return e, nil
}

// decode reads one TLV from b and returns it with the remaining bytes.
func (d *berDecoder) decode(b []byte, depth int) (*element, []byte, error) {
	if depth > maxDepth {
		return nil, nil, fmt.Errorf("%w: nesting deeper than %d", ErrMalformed, maxDepth)
	}
	d.elements++
	if d.elements > maxElements {
		return nil, nil, fmt.Errorf("%w: more than %d BER elements", ErrMalformed, maxElements)
	}
	if len(b) < 2 {
		return nil, nil, fmt.Errorf("%w: truncated BER header", ErrMalformed)
	}
	e := &element{class: int(b[0] >> 6), constructed: b[0]&0x20 != 0, tag: int(b[0] & 0x1f)}
	i := 1
	if e.tag == 0x1f {
		// High tag number form: base-128, at most 3 bytes (tags < 2^21).
		e.tag = 0
		for n := 0; ; n++ {
			if i >= len(b) {
				return nil, nil, fmt.Errorf("%w: truncated high tag number", ErrMalformed)
			}
			if n == 3 {
				return nil, nil, fmt.Errorf("%w: tag number too large", ErrMalformed)
			}
			c := b[i]
			i++
			e.tag = e.tag<<7 | int(c&0x7f)
			if c&0x80 == 0 {
				break
			}
		}
	}
	if i >= len(b) {
		return nil, nil, fmt.Errorf("%w: truncated BER length", ErrMalformed)
	}
	l := b[i]
	i++
	switch {
	case l == 0x80:
		// Indefinite length: constructed only, children until end-of-contents.
		if !e.constructed {
			return nil, nil, fmt.Errorf("%w: indefinite length on a primitive element", ErrMalformed)
		}
		rest := b[i:]
		for {
			if len(rest) >= 2 && rest[0] == 0 && rest[1] == 0 {
				return e, rest[2:], nil
			}
			if len(rest) == 0 {
				return nil, nil, fmt.Errorf("%w: missing end-of-contents", ErrMalformed)
			}
			c, r, err := d.decode(rest, depth+1)
			if err != nil {
				return nil, nil, err
			}
			e.children = append(e.children, c)
			rest = r
		}
	case l&0x80 == 0:
		return d.finish(e, b[i:], int(l), depth)
	default:
		n := int(l & 0x7f)
		if n > 4 {
			return nil, nil, fmt.Errorf("%w: length of length %d too large", ErrMalformed, n)
		}
		if i+n > len(b) {
			return nil, nil, fmt.Errorf("%w: truncated BER length", ErrMalformed)
		}
		length := 0
		for _, c := range b[i : i+n] {
			length = length<<8 | int(c)
		}
		return d.finish(e, b[i+n:], length, depth)
	}
}

// finish completes a definite-length element whose content starts at b.
func (d *berDecoder) finish(e *element, b []byte, length, depth int) (*element, []byte, error) {
	if length < 0 || length > len(b) {
		return nil, nil, fmt.Errorf("%w: length %d exceeds the %d bytes available", ErrMalformed, length, len(b))
	}
	content, rest := b[:length], b[length:]
	if !e.constructed {
		if e.class == classUniversal && e.tag == 0 {
			return nil, nil, fmt.Errorf("%w: unexpected end-of-contents", ErrMalformed)
		}
		e.content = content
		return e, rest, nil
	}
	for len(content) > 0 {
		c, r, err := d.decode(content, depth+1)
		if err != nil {
			return nil, nil, err
		}
		e.children = append(e.children, c)
		content = r
	}
	return e, rest, nil
}

// octets returns the value of an OCTET STRING-like element: the content of a
// primitive element, or the concatenation of the (recursively) primitive
// OCTET STRING chunks of a constructed one.
func octets(e *element) ([]byte, error) {
	if !e.constructed {
		return e.content, nil
	}
	var out []byte
	var walk func(*element, int) error
	walk = func(x *element, depth int) error {
		for _, c := range x.children {
			if !c.is(classUniversal, tagOctetString) {
				return fmt.Errorf("%w: constructed octet string holds a non-OCTET STRING chunk", ErrMalformed)
			}
			if c.constructed {
				if err := walk(c, depth+1); err != nil {
					return err
				}
				continue
			}
			out = append(out, c.content...)
		}
		return nil
	}
	if err := walk(e, 0); err != nil {
		return nil, err
	}
	return out, nil
}

// smallInt decodes a primitive INTEGER that must fit in a non-negative int.
func smallInt(e *element) (int, error) {
	if !e.is(classUniversal, tagInteger) || e.constructed {
		return 0, fmt.Errorf("%w: expected INTEGER", ErrMalformed)
	}
	c := e.content
	if len(c) == 0 || len(c) > 4 || c[0]&0x80 != 0 {
		return 0, fmt.Errorf("%w: INTEGER out of range", ErrMalformed)
	}
	v := 0
	for _, x := range c {
		v = v<<8 | int(x)
	}
	return v, nil
}

// oid returns the content bytes of a primitive OBJECT IDENTIFIER element.
func oid(e *element) ([]byte, error) {
	if !e.is(classUniversal, tagOID) || e.constructed || len(e.content) == 0 {
		return nil, fmt.Errorf("%w: expected OBJECT IDENTIFIER", ErrMalformed)
	}
	return e.content, nil
}

// constructedOf checks that e is a constructed element with the given class and tag.
func constructedOf(e *element, class, tag int, what string) error {
	if !e.is(class, tag) || !e.constructed {
		return fmt.Errorf("%w: %s: unexpected element (class %d tag %d)", ErrMalformed, what, e.class, e.tag)
	}
	return nil
}
