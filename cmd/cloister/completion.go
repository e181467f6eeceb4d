package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloister/cloister/parent"
)

// completionTimeout bounds the daemon query behind a completion, so a
// missing or stuck daemon never hangs the shell.
const completionTimeout = 2 * time.Second

// registerCompletions adds dynamic shell completion to the flags that name
// an existing enclave (--enclave-id, --enclave-name, --enclave-cid: the
// running enclaves, asked of the daemon at --socket) and to --eif-path
// (*.eif files). run-enclave's --enclave-name and --enclave-cid choose a new
// enclave's and are not completed.
func registerCompletions(root *cobra.Command) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			walk(sub)
		}
		if c.Flags().Lookup("eif-path") != nil {
			_ = c.RegisterFlagCompletionFunc("eif-path", func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
				return []cobra.Completion{"eif"}, cobra.ShellCompDirectiveFilterFileExt
			})
		}
		if c.Name() == "run-enclave" {
			return
		}
		for _, f := range []struct {
			flag string
			key  func(parent.EnclaveDescription) string
		}{
			{"enclave-id", func(e parent.EnclaveDescription) string { return e.EnclaveID }},
			{"enclave-name", func(e parent.EnclaveDescription) string { return e.EnclaveName }},
			{"enclave-cid", func(e parent.EnclaveDescription) string { return strconv.FormatUint(e.EnclaveCID, 10) }},
		} {
			if c.Flags().Lookup(f.flag) != nil {
				_ = c.RegisterFlagCompletionFunc(f.flag, completeEnclaves(f.key))
			}
		}
	}
	walk(root)
}

// completeEnclaves completes with key(enclave) for every running enclave,
// each described by the others' fields ("ID  name, CID n, STATE").
func completeEnclaves(key func(parent.EnclaveDescription) string) cobra.CompletionFunc {
	return func(cmd *cobra.Command, _ []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		sock, _ := cmd.Flags().GetString("socket")
		ctx, cancel := context.WithTimeout(cmd.Context(), completionTimeout)
		defer cancel()
		list, err := parent.NewClient(sock).Describe(ctx, false)
		if err != nil {
			cobra.CompDebugln("cloister: completion: "+err.Error(), true)
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return enclaveCompletions(list, key), cobra.ShellCompDirectiveNoFileComp
	}
}

func enclaveCompletions(list []parent.EnclaveDescription, key func(parent.EnclaveDescription) string) []cobra.Completion {
	out := make([]cobra.Completion, 0, len(list))
	for _, e := range list {
		out = append(out, cobra.CompletionWithDesc(key(e),
			fmt.Sprintf("%s %s, CID %d, %s", e.EnclaveName, e.EnclaveID, e.EnclaveCID, e.State)))
	}
	return out
}
