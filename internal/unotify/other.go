//go:build !linux

package unotify
