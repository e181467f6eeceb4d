package kms

import (
	"errors"
	"fmt"
	"net/http"
)

// AWS KMS error codes (the JSON "__type") the server returns.
const (
	CodeAccessDenied          = "AccessDeniedException"
	CodeAlreadyExists         = "AlreadyExistsException"
	CodeDisabled              = "DisabledException"
	CodeIncorrectKey          = "IncorrectKeyException"
	CodeInvalidAliasName      = "InvalidAliasNameException"
	CodeInvalidArn            = "InvalidArnException"
	CodeInvalidCiphertext     = "InvalidCiphertextException"
	CodeInvalidKeyUsage       = "InvalidKeyUsageException"
	CodeInvalidMarker         = "InvalidMarkerException"
	CodeInvalidState          = "KMSInvalidStateException"
	CodeInternal              = "KMSInternalException"
	CodeMalformedPolicy       = "MalformedPolicyDocumentException"
	CodeNotFound              = "NotFoundException"
	CodeUnsupportedOperation  = "UnsupportedOperationException"
	CodeValidation            = "ValidationException"
	CodeSerialization         = "SerializationException"
	CodeUnknownOperation      = "UnknownOperationException"
	CodeDryRunOperation       = "DryRunOperationException"
	CodeMissingAuthentication = "MissingAuthenticationTokenException"
	CodeInvalidSignature      = "KMSInvalidSignatureException"
	CodeInvalidMac            = "KMSInvalidMacException"
	CodeInvalidGrantToken     = "InvalidGrantTokenException"
	CodeInvalidGrantID        = "InvalidGrantIdException"
	CodeTag                   = "TagException"
	CodeLimitExceeded         = "LimitExceededException"
)

// ErrAPI is wrapped by every *APIError.
var ErrAPI = errors.New("kms: request failed")

// APIError is an AWS-style error response: the code (JSON "__type"), the
// HTTP status and the message.
type APIError struct {
	Code    string
	Status  int
	Message string
}

// Error returns "kms: <code>: <message>".
func (e *APIError) Error() string { return "kms: " + e.Code + ": " + e.Message }

// Unwrap returns ErrAPI.
func (e *APIError) Unwrap() error { return ErrAPI }

// statusOf gives the HTTP status AWS uses for a code (400 unless listed).
func statusOf(code string) int {
	switch code {
	case CodeInternal, "KeyUnavailableException", "DependencyTimeoutException", "InternalFailure":
		return http.StatusInternalServerError
	case CodeDryRunOperation:
		return http.StatusPreconditionFailed
	case "ServiceUnavailable":
		return http.StatusServiceUnavailable
	}
	return http.StatusBadRequest
}

func apiErr(code, format string, args ...any) *APIError {
	return &APIError{Code: code, Status: statusOf(code), Message: fmt.Sprintf(format, args...)}
}
