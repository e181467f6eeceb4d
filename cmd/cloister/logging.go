package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"
)

// logFlags are --log-level and --log-format, which every long-running
// command (daemon, kms serve, attest serve, device-plugin) takes.
type logFlags struct {
	level, format string
}

// addLogFlags registers --log-level and --log-format (default format) on cmd.
func addLogFlags(cmd *cobra.Command, format string) *logFlags {
	var f logFlags
	cmd.Flags().StringVar(&f.level, "log-level", "info", "least severe log level written: debug, info, warn or error")
	cmd.Flags().StringVar(&f.format, "log-format", format, "log format on stderr: text or json")
	_ = cmd.RegisterFlagCompletionFunc("log-level", cobra.FixedCompletions([]cobra.Completion{"debug", "info", "warn", "error"}, cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.RegisterFlagCompletionFunc("log-format", cobra.FixedCompletions([]cobra.Completion{"text", "json"}, cobra.ShellCompDirectiveNoFileComp))
	return &f
}

// logger returns the logger the flags describe, writing to w.
func (f *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.level)); err != nil || strings.ContainsAny(f.level, "+-") {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", f.level)
	}
	if f.format != "text" && f.format != "json" {
		return nil, fmt.Errorf("--log-format %q: want text or json", f.format)
	}
	return newLogger(w, level, f.format), nil
}

// newLogger is the one place this command builds a logger: slog's text
// (key=value) or JSON handler on w, writing level and above. format is
// "text" or "json" (anything else is text).
func newLogger(w io.Writer, level slog.Leveler, format string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
