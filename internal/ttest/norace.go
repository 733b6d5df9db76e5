//go:build !race

package ttest

const raceEnabled = false
