// Package sigv4 verifies AWS Signature Version 4 (header form) on requests
// to the Cloister key service, exactly as an AWS JSON service does, so the
// unmodified AWS SDKs and CLI can call it.
//
// Access keys come from an AWS shared-credentials file ([LoadCredentialsFile])
// with one Cloister extension per profile, principal_arn, naming the IAM
// identity key policies see. [Verifier.Verify] checks the signature and the
// request time against a skew window (5 minutes). As on AWS, a signature is
// not a nonce: the same signed request is accepted again within that window
// (identical requests signed in the same second are common), so a Verifier
// keeps no per-request state. Failures are [*Error] values carrying the AWS
// error code to return.
package sigv4
