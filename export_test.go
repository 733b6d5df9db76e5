package tether

// CauseLabel is causeLabel, for the external tests (the chaos report sorts
// evictions by the labels the metrics use).
var CauseLabel = causeLabel
