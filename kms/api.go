package kms

import "github.com/cloister/cloister/kms/policy"

// Request and response bodies of the AWS KMS JSON 1.1 operations the
// server implements, with AWS's member names. Blobs are []byte (base64 in
// JSON, as AWS). Optional scalars are pointers so absence is visible.

// RecipientInfo is the attested Recipient member.
type RecipientInfo struct {
	AttestationDocument    []byte `json:"AttestationDocument,omitempty"`
	KeyEncryptionAlgorithm string `json:"KeyEncryptionAlgorithm,omitempty"`
}

// KeyMetadata describes a key (AWS KeyMetadata subset).
type KeyMetadata struct {
	AWSAccountID                string   `json:"AWSAccountId"`
	KeyID                       string   `json:"KeyId"`
	Arn                         string   `json:"Arn"`
	CreationDate                float64  `json:"CreationDate"`
	Enabled                     bool     `json:"Enabled"`
	Description                 string   `json:"Description"`
	KeyUsage                    string   `json:"KeyUsage"`
	KeyState                    string   `json:"KeyState"`
	DeletionDate                *float64 `json:"DeletionDate,omitempty"`
	PendingDeletionWindowInDays *int     `json:"PendingDeletionWindowInDays,omitempty"`
	Origin                      string   `json:"Origin"`
	KeyManager                  string   `json:"KeyManager"`
	CustomerMasterKeySpec       string   `json:"CustomerMasterKeySpec"`
	KeySpec                     string   `json:"KeySpec"`
	EncryptionAlgorithms        []string `json:"EncryptionAlgorithms,omitempty"`
	SigningAlgorithms           []string `json:"SigningAlgorithms,omitempty"`
	MacAlgorithms               []string `json:"MacAlgorithms,omitempty"`
	KeyAgreementAlgorithms      []string `json:"KeyAgreementAlgorithms,omitempty"`
	MultiRegion                 bool     `json:"MultiRegion"`
}

// Tag is one key tag.
type Tag struct {
	TagKey   string `json:"TagKey"`
	TagValue string `json:"TagValue"`
}

type createKeyInput struct {
	Description                    *string `json:"Description"`
	KeyUsage                       *string `json:"KeyUsage"`
	KeySpec                        *string `json:"KeySpec"`
	CustomerMasterKeySpec          *string `json:"CustomerMasterKeySpec"`
	Policy                         *string `json:"Policy"`
	Origin                         *string `json:"Origin"`
	MultiRegion                    *bool   `json:"MultiRegion"`
	BypassPolicyLockoutSafetyCheck bool    `json:"BypassPolicyLockoutSafetyCheck"`
	Tags                           []Tag   `json:"Tags"`
	CustomKeyStoreID               *string `json:"CustomKeyStoreId"`
	XksKeyID                       *string `json:"XksKeyId"`
}

type keyMetadataOutput struct {
	KeyMetadata KeyMetadata `json:"KeyMetadata"`
}

type keyIDInput struct {
	KeyID string `json:"KeyId"`
}

// keyIDTokensInput is a KeyId-only request that also takes grant tokens
// (DescribeKey, GetPublicKey).
type keyIDTokensInput struct {
	KeyID       string   `json:"KeyId"`
	GrantTokens []string `json:"GrantTokens"`
}

type keyIDOutput struct {
	KeyID string `json:"KeyId"`
}

type listInput struct {
	KeyID  string `json:"KeyId"`
	Limit  *int   `json:"Limit"`
	Marker string `json:"Marker"`
}

type keyListEntry struct {
	KeyID  string `json:"KeyId"`
	KeyArn string `json:"KeyArn"`
}

type listKeysOutput struct {
	Keys       []keyListEntry `json:"Keys"`
	NextMarker string         `json:"NextMarker,omitempty"`
	Truncated  bool           `json:"Truncated"`
}

type aliasListEntry struct {
	AliasName       string  `json:"AliasName"`
	AliasArn        string  `json:"AliasArn"`
	TargetKeyID     string  `json:"TargetKeyId"`
	CreationDate    float64 `json:"CreationDate"`
	LastUpdatedDate float64 `json:"LastUpdatedDate"`
}

type listAliasesOutput struct {
	Aliases    []aliasListEntry `json:"Aliases"`
	NextMarker string           `json:"NextMarker,omitempty"`
	Truncated  bool             `json:"Truncated"`
}

type createAliasInput struct {
	AliasName   string `json:"AliasName"`
	TargetKeyID string `json:"TargetKeyId"`
}

type deleteAliasInput struct {
	AliasName string `json:"AliasName"`
}

type encryptInput struct {
	KeyID               string            `json:"KeyId"`
	Plaintext           []byte            `json:"Plaintext"`
	EncryptionContext   map[string]string `json:"EncryptionContext"`
	EncryptionAlgorithm string            `json:"EncryptionAlgorithm"`
	GrantTokens         []string          `json:"GrantTokens"`
	DryRun              bool              `json:"DryRun"`
}

type encryptOutput struct {
	CiphertextBlob      []byte `json:"CiphertextBlob"`
	KeyID               string `json:"KeyId"`
	EncryptionAlgorithm string `json:"EncryptionAlgorithm"`
}

type decryptInput struct {
	CiphertextBlob      []byte            `json:"CiphertextBlob"`
	KeyID               string            `json:"KeyId"`
	EncryptionContext   map[string]string `json:"EncryptionContext"`
	EncryptionAlgorithm string            `json:"EncryptionAlgorithm"`
	GrantTokens         []string          `json:"GrantTokens"`
	Recipient           *RecipientInfo    `json:"Recipient"`
	DryRun              bool              `json:"DryRun"`
	DryRunModifiers     []string          `json:"DryRunModifiers"`
}

type decryptOutput struct {
	KeyID                  string `json:"KeyId"`
	Plaintext              []byte `json:"Plaintext,omitempty"`
	CiphertextForRecipient []byte `json:"CiphertextForRecipient,omitempty"`
	EncryptionAlgorithm    string `json:"EncryptionAlgorithm"`
}

type reEncryptInput struct {
	CiphertextBlob                 []byte            `json:"CiphertextBlob"`
	SourceKeyID                    string            `json:"SourceKeyId"`
	SourceEncryptionContext        map[string]string `json:"SourceEncryptionContext"`
	SourceEncryptionAlgorithm      string            `json:"SourceEncryptionAlgorithm"`
	DestinationKeyID               string            `json:"DestinationKeyId"`
	DestinationEncryptionContext   map[string]string `json:"DestinationEncryptionContext"`
	DestinationEncryptionAlgorithm string            `json:"DestinationEncryptionAlgorithm"`
	GrantTokens                    []string          `json:"GrantTokens"`
	DryRun                         bool              `json:"DryRun"`
	DryRunModifiers                []string          `json:"DryRunModifiers"`
}

type reEncryptOutput struct {
	CiphertextBlob                 []byte `json:"CiphertextBlob"`
	SourceKeyID                    string `json:"SourceKeyId"`
	KeyID                          string `json:"KeyId"`
	SourceEncryptionAlgorithm      string `json:"SourceEncryptionAlgorithm"`
	DestinationEncryptionAlgorithm string `json:"DestinationEncryptionAlgorithm"`
}

type generateDataKeyInput struct {
	KeyID             string            `json:"KeyId"`
	EncryptionContext map[string]string `json:"EncryptionContext"`
	NumberOfBytes     *int              `json:"NumberOfBytes"`
	KeySpec           *string           `json:"KeySpec"`
	GrantTokens       []string          `json:"GrantTokens"`
	Recipient         *RecipientInfo    `json:"Recipient"`
	DryRun            bool              `json:"DryRun"`
}

type generateDataKeyOutput struct {
	CiphertextBlob         []byte `json:"CiphertextBlob"`
	Plaintext              []byte `json:"Plaintext,omitempty"`
	CiphertextForRecipient []byte `json:"CiphertextForRecipient,omitempty"`
	KeyID                  string `json:"KeyId"`
}

type generateRandomInput struct {
	NumberOfBytes    *int           `json:"NumberOfBytes"`
	CustomKeyStoreID string         `json:"CustomKeyStoreId"`
	Recipient        *RecipientInfo `json:"Recipient"`
}

type generateRandomOutput struct {
	Plaintext              []byte `json:"Plaintext,omitempty"`
	CiphertextForRecipient []byte `json:"CiphertextForRecipient,omitempty"`
}

type getKeyPolicyInput struct {
	KeyID      string `json:"KeyId"`
	PolicyName string `json:"PolicyName"`
}

type getKeyPolicyOutput struct {
	Policy     string `json:"Policy"`
	PolicyName string `json:"PolicyName"`
}

type putKeyPolicyInput struct {
	KeyID                          string `json:"KeyId"`
	PolicyName                     string `json:"PolicyName"`
	Policy                         string `json:"Policy"`
	BypassPolicyLockoutSafetyCheck bool   `json:"BypassPolicyLockoutSafetyCheck"`
}

type enableKeyRotationInput struct {
	KeyID                string `json:"KeyId"`
	RotationPeriodInDays *int   `json:"RotationPeriodInDays"`
}

type getKeyRotationStatusOutput struct {
	KeyRotationEnabled   bool     `json:"KeyRotationEnabled"`
	KeyID                string   `json:"KeyId"`
	RotationPeriodInDays *int     `json:"RotationPeriodInDays,omitempty"`
	NextRotationDate     *float64 `json:"NextRotationDate,omitempty"`
}

type scheduleKeyDeletionInput struct {
	KeyID               string `json:"KeyId"`
	PendingWindowInDays *int   `json:"PendingWindowInDays"`
}

type scheduleKeyDeletionOutput struct {
	KeyID               string  `json:"KeyId"`
	DeletionDate        float64 `json:"DeletionDate"`
	KeyState            string  `json:"KeyState"`
	PendingWindowInDays int     `json:"PendingWindowInDays"`
}

// ExplainInput is the body of the Cloister extension operation
// TrentService.CloisterExplain: a dry run of the key-policy decision.
type ExplainInput struct {
	// KeyId names the key whose policy is evaluated (any KeyId form).
	KeyID string `json:"KeyId,omitempty"`
	// Policy, when set, is evaluated instead of the key's stored policy
	// (to test a policy before PutKeyPolicy); KeyId may then be empty.
	Policy string `json:"Policy,omitempty"`
	// Action is the operation, e.g. "kms:Decrypt" or "Decrypt".
	Action string `json:"Action"`
	// PrincipalArn is the caller to simulate; default the requester.
	PrincipalArn string `json:"PrincipalArn,omitempty"`
	// EncryptionContext is the request's encryption context.
	EncryptionContext map[string]string `json:"EncryptionContext,omitempty"`
	// Recipient carries an attestation document to verify and use, as on
	// Decrypt.
	Recipient *RecipientInfo `json:"Recipient,omitempty"`
	// RequestId, when set, asks instead for the recorded reasoning of a
	// denied request (the id an AccessDeniedException message names); the
	// other members are then ignored.
	RequestID string `json:"RequestId,omitempty"`
}

// ExplainOutput is the response of CloisterExplain.
type ExplainOutput struct {
	KeyID     string `json:"KeyId,omitempty"`
	Action    string `json:"Action"`
	Principal string `json:"PrincipalArn"`
	// Attestation reports the Recipient document's verification.
	Attestation *AttestationReport `json:"Attestation,omitempty"`
	// Explanation is the policy decision with per-statement reasons.
	Explanation policy.Explanation `json:"Explanation"`
	// RequestId and At identify a denied request explained by id.
	RequestID string  `json:"RequestId,omitempty"`
	At        float64 `json:"At,omitempty"`
}

// AttestationReport summarises a Recipient attestation document's checks.
type AttestationReport struct {
	Valid bool              `json:"Valid"`
	Error string            `json:"Error,omitempty"`
	PCRs  map[string]string `json:"PCRs,omitempty"`
}

type signInput struct {
	KeyID            string   `json:"KeyId"`
	Message          []byte   `json:"Message"`
	MessageType      string   `json:"MessageType"`
	SigningAlgorithm string   `json:"SigningAlgorithm"`
	GrantTokens      []string `json:"GrantTokens"`
	DryRun           bool     `json:"DryRun"`
	// CloisterAttestation is the Cloister extension member of Sign (see
	// SignAttestation); unmodified SDKs never send it.
	CloisterAttestation *SignAttestation `json:"CloisterAttestation"`
}

// SignAttestation is the Cloister extension member "CloisterAttestation"
// of a Sign request: an attestation document whose user_data is the exact
// digest to be signed (the message's hash under the signing algorithm, or
// the DIGEST sent). It is verified like a Recipient document, and its PCRs
// feed the kms:RecipientAttestation:* condition keys of the key policy.
type SignAttestation struct {
	AttestationDocument []byte `json:"AttestationDocument"`
}

type signOutput struct {
	KeyID            string `json:"KeyId"`
	Signature        []byte `json:"Signature"`
	SigningAlgorithm string `json:"SigningAlgorithm"`
}

type verifyInput struct {
	KeyID            string   `json:"KeyId"`
	Message          []byte   `json:"Message"`
	MessageType      string   `json:"MessageType"`
	Signature        []byte   `json:"Signature"`
	SigningAlgorithm string   `json:"SigningAlgorithm"`
	GrantTokens      []string `json:"GrantTokens"`
	DryRun           bool     `json:"DryRun"`
}

type verifyOutput struct {
	KeyID            string `json:"KeyId"`
	SignatureValid   bool   `json:"SignatureValid"`
	SigningAlgorithm string `json:"SigningAlgorithm"`
}

type getPublicKeyOutput struct {
	KeyID                  string   `json:"KeyId"`
	PublicKey              []byte   `json:"PublicKey"`
	CustomerMasterKeySpec  string   `json:"CustomerMasterKeySpec"`
	KeySpec                string   `json:"KeySpec"`
	KeyUsage               string   `json:"KeyUsage"`
	EncryptionAlgorithms   []string `json:"EncryptionAlgorithms,omitempty"`
	SigningAlgorithms      []string `json:"SigningAlgorithms,omitempty"`
	KeyAgreementAlgorithms []string `json:"KeyAgreementAlgorithms,omitempty"`
}

type generateMacInput struct {
	KeyID        string   `json:"KeyId"`
	Message      []byte   `json:"Message"`
	MacAlgorithm string   `json:"MacAlgorithm"`
	GrantTokens  []string `json:"GrantTokens"`
	DryRun       bool     `json:"DryRun"`
}

type verifyMacInput struct {
	KeyID        string   `json:"KeyId"`
	Message      []byte   `json:"Message"`
	MacAlgorithm string   `json:"MacAlgorithm"`
	Mac          []byte   `json:"Mac"`
	GrantTokens  []string `json:"GrantTokens"`
	DryRun       bool     `json:"DryRun"`
}

type generateMacOutput struct {
	KeyID        string `json:"KeyId"`
	Mac          []byte `json:"Mac"`
	MacAlgorithm string `json:"MacAlgorithm"`
}

type verifyMacOutput struct {
	KeyID        string `json:"KeyId"`
	MacValid     bool   `json:"MacValid"`
	MacAlgorithm string `json:"MacAlgorithm"`
}

type generateDataKeyPairInput struct {
	KeyID             string            `json:"KeyId"`
	KeyPairSpec       string            `json:"KeyPairSpec"`
	EncryptionContext map[string]string `json:"EncryptionContext"`
	GrantTokens       []string          `json:"GrantTokens"`
	Recipient         *RecipientInfo    `json:"Recipient"`
	DryRun            bool              `json:"DryRun"`
}

type generateDataKeyPairOutput struct {
	KeyID                    string `json:"KeyId"`
	KeyPairSpec              string `json:"KeyPairSpec"`
	PublicKey                []byte `json:"PublicKey"`
	PrivateKeyCiphertextBlob []byte `json:"PrivateKeyCiphertextBlob"`
	PrivateKeyPlaintext      []byte `json:"PrivateKeyPlaintext,omitempty"`
	CiphertextForRecipient   []byte `json:"CiphertextForRecipient,omitempty"`
}

type deriveSharedSecretInput struct {
	KeyID                 string         `json:"KeyId"`
	KeyAgreementAlgorithm string         `json:"KeyAgreementAlgorithm"`
	PublicKey             []byte         `json:"PublicKey"`
	GrantTokens           []string       `json:"GrantTokens"`
	Recipient             *RecipientInfo `json:"Recipient"`
	DryRun                bool           `json:"DryRun"`
}

type deriveSharedSecretOutput struct {
	KeyID                  string `json:"KeyId"`
	SharedSecret           []byte `json:"SharedSecret,omitempty"`
	CiphertextForRecipient []byte `json:"CiphertextForRecipient,omitempty"`
	KeyAgreementAlgorithm  string `json:"KeyAgreementAlgorithm"`
	KeyOrigin              string `json:"KeyOrigin"`
}

type tagResourceInput struct {
	KeyID string `json:"KeyId"`
	Tags  []Tag  `json:"Tags"`
}

type untagResourceInput struct {
	KeyID   string   `json:"KeyId"`
	TagKeys []string `json:"TagKeys"`
}

type listResourceTagsOutput struct {
	Tags       []Tag  `json:"Tags"`
	NextMarker string `json:"NextMarker,omitempty"`
	Truncated  bool   `json:"Truncated"`
}

type updateKeyDescriptionInput struct {
	KeyID       string  `json:"KeyId"`
	Description *string `json:"Description"`
}

type listKeyPoliciesOutput struct {
	PolicyNames []string `json:"PolicyNames"`
	NextMarker  string   `json:"NextMarker,omitempty"`
	Truncated   bool     `json:"Truncated"`
}

type listKeyRotationsInput struct {
	KeyID              string `json:"KeyId"`
	Limit              *int   `json:"Limit"`
	Marker             string `json:"Marker"`
	IncludeKeyMaterial string `json:"IncludeKeyMaterial"`
}

type rotationEntry struct {
	KeyID        string  `json:"KeyId"`
	RotationDate float64 `json:"RotationDate"`
	RotationType string  `json:"RotationType"`
}

type listKeyRotationsOutput struct {
	Rotations  []rotationEntry `json:"Rotations"`
	NextMarker string          `json:"NextMarker,omitempty"`
	Truncated  bool            `json:"Truncated"`
}
