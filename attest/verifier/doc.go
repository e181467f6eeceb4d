// Package verifier is Cloister's attestation verification service (the
// RATS "Verifier" role, nitro-reference §13): an http.Handler that appraises
// AWS Nitro Enclaves attestation documents and answers with EAR attestation
// results, served by `cloister attest serve`.
//
// Endpoints (docs/verifier-api.yaml, also served at /openapi.yaml):
//
//   - POST /v1/verify: the document (raw CBOR, hex or base64, or a JSON
//     envelope with a named or inline policy, an expected nonce, a challenge
//     demand and, with AllowTimeOverride, the verification time). The answer
//     holds the claims (exactly `cloister verify --json`'s object), every
//     check, the verdict and an EAR JWT. Evidence that verifies badly gets
//     200 with a negative verdict; only unparseable input gets 4xx.
//   - POST /v1/challenges: a single-use nonce with a TTL. Each client
//     (source address block; X-Forwarded-For only from a trusted proxy)
//     may hold a bounded share of the challenges and sessions and create
//     them at a bounded rate (Config.MaxChallengesPerClient, ClientRate…).
//   - Veraison's challenge-response API under /challenge-response/v1 and
//     its discovery document at /.well-known/veraison/verification.
//   - /.well-known/jwks.json and /.well-known/openid-configuration: the
//     token signing keys (rotated; retired keys stay until their tokens
//     expire). The issuer is Config.Issuer or derived from the listen
//     address (DefaultIssuer), never from a request's Host header.
//   - / (a page to paste or upload a document), /healthz, /readyz,
//     /metrics (Prometheus).
//
// Cryptographic verification is attest.Verifier's; policy evaluation is
// attest.Policy's. This package decodes requests, maps results to EAR
// (trust vector and status), keeps the challenge and session stores, and
// signs tokens.
package verifier
