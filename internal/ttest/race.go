//go:build race

package ttest

const raceEnabled = true
