package main

import (
	"fmt"
	"math"
	"strings"
)

// metrics is what one part measured on one target (or on one query kind of
// one target): numbers by key, text cells by key, or the error that made
// the part not measurable there.
type metrics struct {
	v   map[string]float64
	s   map[string]string
	err error
}

func newMetrics() metrics { return metrics{v: map[string]float64{}, s: map[string]string{}} }

func failed(err error) metrics { return metrics{err: err} }

// column of a table: key into metrics, heading, decimals. ratio adds a
// "gateway/orthanc" column for it.
type column struct {
	key, head string
	prec      int
	ratio     bool
}

// row of a table; group names which orthanc row a gateway row is compared
// with (the same query kind in (d); "" elsewhere).
type row struct {
	label, target, group string
	m                    metrics
}

type table struct {
	title string
	cols  []column
	rows  []row
	notes []string
}

func fmtNum(v float64, prec int) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "—"
	}
	return fmt.Sprintf("%.*f", prec, v)
}

func cellEscape(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 400 {
		s = s[:400] + "…"
	}
	return s
}

// markdown renders t: rows = targets, figure columns, then one ratio column
// (gateway value / orthanc value) per figure marked ratio.
func (t *table) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "### %s\n\n", t.title)
	heads := []string{"target"}
	for _, c := range t.cols {
		heads = append(heads, c.head)
	}
	for _, c := range t.cols {
		if c.ratio {
			heads = append(heads, "gateway/orthanc "+c.head)
		}
	}
	b.WriteString("| " + strings.Join(heads, " | ") + " |\n|")
	for i := range heads {
		if i == 0 {
			b.WriteString("---|")
		} else {
			b.WriteString("---:|")
		}
	}
	b.WriteString("\n")
	base := map[string]metrics{}
	for _, r := range t.rows {
		if r.target == targetOrthanc {
			base[r.group] = r.m
		}
	}
	for _, r := range t.rows {
		cells := []string{r.label}
		if r.m.err != nil {
			cells = append(cells, "not measurable: "+cellEscape(r.m.err.Error()))
			for range len(heads) - 2 {
				cells = append(cells, "")
			}
			b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
			continue
		}
		for _, c := range t.cols {
			if s, ok := r.m.s[c.key]; ok {
				cells = append(cells, cellEscape(s))
			} else if v, ok := r.m.v[c.key]; ok {
				cells = append(cells, fmtNum(v, c.prec))
			} else {
				cells = append(cells, "—")
			}
		}
		for _, c := range t.cols {
			if !c.ratio {
				continue
			}
			o, ok := base[r.group]
			v, okv := r.m.v[c.key]
			ov, oko := o.v[c.key]
			switch {
			case r.target == targetOrthanc:
				cells = append(cells, "1")
			case !ok || o.err != nil || !okv || !oko || ov == 0:
				cells = append(cells, "—")
			default:
				cells = append(cells, fmt.Sprintf("%.2f", v/ov))
			}
		}
		b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
	}
	for _, n := range t.notes {
		b.WriteString("\n" + n + "\n")
	}
	b.WriteString("\n")
	return b.String()
}
