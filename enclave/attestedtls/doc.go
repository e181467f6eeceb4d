// Package attestedtls is attested TLS for enclave services: the client knows
// it talks to an enclave running the expected image before it sends any
// application data, without any certificate authority.
//
// Server side (inside the enclave): [NewServer] generates a fresh key pair
// and a self-signed certificate in enclave memory and serves HTTPS on any
// listener (typically enclave.Listen). Besides the application's handler it
// serves [Path]: GET Path?nonce=<hex> answers an attestation document from
// the security module whose nonce is the client's and whose user_data is
// [KeyBinding] of the certificate's public key: SHA-256 of its DER
// SubjectPublicKeyInfo. [Handler] serves that endpoint alone.
//
// Client side (on the parent or anywhere the stream reaches): a [Client]
// runs the TLS handshake over a connection it is given (e.g. one from
// parent.Client.Connect), then, on that same TLS connection and before
// returning it, asks for a document bound to a fresh random nonce and checks,
// in this order:
//
//  1. the document verifies with the configured [attest.Verifier] (chain to
//     a trusted root, signature); failure: [ErrVerify];
//  2. its nonce is the one just sent, so it was made for this request and is
//     not a replay; failure: *[ReplayError], [ErrReplay];
//  3. its user_data is KeyBinding of the public key the TLS peer proved it
//     holds in this handshake, so the enclave holds the TLS key and nobody
//     relays its documents; failure: *[KeyMismatchError], [ErrKeyMismatch];
//  4. the configured [attest.Policy] (PCRs, debug mode, age) accepts it;
//     failure: [ErrPolicy] wrapping *attest.PolicyError.
//
// Only then does it return the connection ([Conn]), or, through
// [Client.HTTPClient], use it for requests. A malformed exchange with the
// endpoint is [ErrEndpoint], a failed TLS handshake [ErrHandshake].
package attestedtls
