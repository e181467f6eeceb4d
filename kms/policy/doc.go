// Package policy implements the subset of the AWS key-policy language the
// Cloister key service enforces: parsing with validation ([Parse]),
// evaluation with AWS's rules ([Policy.Evaluate]: an applicable Deny wins,
// otherwise an applicable Allow, otherwise default deny) and a dry-run
// explanation of every statement ([Policy.Explain]).
//
// Supported grammar: Version, Id, Statement (object or array) with Sid,
// Effect, Principal ("*" or {"AWS": ...}), Action/NotAction with wildcards,
// Resource, and Condition with the String*, Arn*, Bool and Null operators,
// the ForAnyValue:/ForAllValues: qualifiers and the IfExists suffix.
// Condition keys the key service provides: kms:RecipientAttestation:ImageSha384,
// kms:RecipientAttestation:PCR<n> (present only for a verified attestation
// document), kms:EncryptionContext:<k>, kms:EncryptionContextKeys,
// kms:CallerAccount, aws:PrincipalArn and aws:PrincipalAccount.
package policy
