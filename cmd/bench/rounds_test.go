package main

import (
	"errors"
	"strings"
	"testing"
)

func rate(ips float64) metrics {
	m := newMetrics()
	m.v["ips"] = ips
	return m
}

// TestMedianRun: a row is its median round (the lower middle one of an
// even count), listing every round's rate in the order run; a failed round
// makes the row failed.
func TestMedianRun(t *testing.T) {
	m := medianRun([]metrics{rate(300), rate(100), rate(200)})
	if m.err != nil || m.v["ips"] != 200 || m.s["rounds"] != "300.0 · 100.0 · 200.0" {
		t.Fatalf("odd count: ips %v rounds %q err %v; want 200, in run order", m.v["ips"], m.s["rounds"], m.err)
	}
	if m := medianRun([]metrics{rate(4), rate(1), rate(3), rate(2)}); m.v["ips"] != 2 {
		t.Fatalf("even count: ips %v, want the lower middle 2", m.v["ips"])
	}
	boom := errors.New("boom")
	if m := medianRun([]metrics{rate(1), failed(boom)}); !errors.Is(m.err, boom) {
		t.Fatalf("a failed round: err %v, want it", m.err)
	}
	if m := medianRun(nil); m.err == nil {
		t.Fatal("no rounds: want an error")
	}
}

// TestRoundsNote: each gateway's rate is divided by Orthanc's of the same
// round, not by Orthanc's median, and the ratios stop at a failed round.
func TestRoundsNote(t *testing.T) {
	targets := []*target{{name: targetEmbedded}, {name: targetOrthanc}, {name: targetRedis}}
	runs := [][]metrics{
		{rate(200), rate(300), rate(90)},
		{rate(100), rate(100), rate(300)},
		{rate(50), failed(errors.New("down")), rate(50)},
	}
	note := roundsNote(targets, runs)
	for _, want := range []string{targetEmbedded + " 2.00, 3.00, 0.30 (median 2.00)", targetRedis + " 0.50 (median 0.50)"} {
		if !strings.Contains(note, want) {
			t.Errorf("note %q lacks %q", note, want)
		}
	}
}
