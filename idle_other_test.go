//go:build !linux

package tether_test

func runAsIdle() bool { return false }
