// Package layers holds no code: its test, TestImportRules, enforces the
// direction of dependencies that docs/ARCHITECTURE.md states, on the import
// graph "go list" reports for the whole module (production files, in-package
// _test.go files and external _test packages, for linux and darwin):
//
//   - internal/ imports only internal/: nothing under the module's
//     internal/ imports a public package (attest, cmd, e2e, enclave,
//     examples, kms, parent, …), tests included. The one exception is
//     internal/nsm's external test package, which runs the /dev/nsm client
//     against the parent's emulator (parent/nsmemu) and verifies its
//     documents (attest) through the fake ioctl seam of
//     export_linux_test.go, which cannot leave the package.
//   - attest and enclave/eif import nothing of Cloister's but
//     internal/cborx, tests included.
//   - only cmd/, e2e/ and examples/ import cmd/….
//   - production code imports no test-support package (a …test package
//     such as parent/parenttest or parent/nitro/nedev/nedevtest, or
//     internal/testenv) and not package testing; test-support packages may
//     import each other.
//
// A violation fails the test with the rule and the offending edge.
package layers
