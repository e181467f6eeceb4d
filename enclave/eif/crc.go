package eif

import "hash/crc32"

// crc32Combine returns the CRC-32 (IEEE, as zlib's crc32) of A‖B given
// crcA = CRC(A), crcB = CRC(B) and lenB = len(B). It lets the streaming
// writer compute the file CRC, which starts with the header, after the
// sections were written: the arithmetic is that of zlib's crc32_combine
// (multiplication by x^(8·lenB) modulo the reflected polynomial).
func crc32Combine(crcA, crcB uint32, lenB int64) uint32 {
	if lenB <= 0 {
		return crcA
	}
	return multModP(xPow8n(lenB), crcA) ^ crcB
}

// multModP multiplies a and b modulo the CRC polynomial (bit-reflected,
// x^0 is the most significant bit).
func multModP(a, b uint32) uint32 {
	var p uint32
	for m := uint32(1) << 31; m != 0; m >>= 1 {
		if a&m != 0 {
			p ^= b
		}
		if b&1 != 0 {
			b = b>>1 ^ crc32.IEEE
		} else {
			b >>= 1
		}
	}
	return p
}

// xPow8n returns x^(8n) modulo the CRC polynomial by square-and-multiply.
func xPow8n(n int64) uint32 {
	result := uint32(1) << 31 // x^0
	sq := uint32(1) << 23     // x^8
	for n > 0 {
		if n&1 != 0 {
			result = multModP(sq, result)
		}
		sq = multModP(sq, sq)
		n >>= 1
	}
	return result
}
