// Package fhirschema validates FHIR R4 JSON against the official FHIR R4
// JSON schema (HL7's fhir.schema.json, the one published with R4 4.0),
// which scripts/testenv.sh fetches, pinned by SHA-256, and names in
// GATEWAY_TEST_FHIR_SCHEMA. The schema checks structure: every property
// belongs to its resource or datatype (no others allowed), values have
// their datatype's form (id, uri, dateTime, code patterns) and codes of
// required bindings are in their value set. Tests only.
package fhirschema

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// schemaURL is the schema's own id (R4 is FHIR 4.0).
const schemaURL = "http://hl7.org/fhir/json-schema/4.0"

// Path returns the schema file: GATEWAY_TEST_FHIR_SCHEMA, else the copy in
// the tools cache testenv.sh fills. Without either the test is skipped,
// or fails under CI=true.
func Path(tb testing.TB) string {
	tb.Helper()
	candidates := []string{os.Getenv("GATEWAY_TEST_FHIR_SCHEMA")}
	for _, d := range []string{os.Getenv("GATEWAY_TEST_TOOLS"), os.Getenv("GATEWAY_CI_TOOLS")} {
		if d != "" {
			candidates = append(candidates, filepath.Join(d, "fhir-r4", "fhir.schema.json"))
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		candidates = append(candidates, filepath.Join(home, ".cache", "gateway-ci", "fhir-r4", "fhir.schema.json"))
	}
	for _, p := range candidates {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		tb.Fatal("FHIR R4 JSON schema not found: run the tests through scripts/testenv.sh, which fetches it")
	}
	tb.Skip("FHIR R4 JSON schema not found (scripts/testenv.sh fetches it)")
	return ""
}

var (
	compileOnce sync.Once
	compiled    *jsonschema.Schema
	compileErr  error
)

// Validator returns the compiled schema (compiled once per test binary:
// the schema is 3 MB).
func Validator(tb testing.TB) *jsonschema.Schema {
	tb.Helper()
	path := Path(tb)
	compileOnce.Do(func() {
		f, err := os.Open(path)
		if err != nil {
			compileErr = err
			return
		}
		defer f.Close()
		doc, err := jsonschema.UnmarshalJSON(f)
		if err != nil {
			compileErr = fmt.Errorf("%s: %w", path, err)
			return
		}
		if n := addTechnicalCorrection(doc); n == 0 {
			compileErr = fmt.Errorf("%s: no FHIRVersion value set holds 4.0.0: not the R4 schema", path)
			return
		}
		c := jsonschema.NewCompiler()
		if err := c.AddResource(schemaURL, doc); err != nil {
			compileErr = err
			return
		}
		compiled, compileErr = c.Compile(schemaURL)
	})
	if compileErr != nil {
		tb.Fatalf("compile the FHIR R4 schema: %v", compileErr)
	}
	return compiled
}

// Validate checks one FHIR JSON resource against the R4 schema.
func Validate(tb testing.TB, body []byte) error {
	tb.Helper()
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	return Validator(tb).Validate(v)
}

// addTechnicalCorrection adds "4.0.1" to every FHIRVersion value set of the
// schema (CapabilityStatement.fhirVersion among them) and returns how many
// it amended. The schema HL7 published with R4 (4.0.0) lists versions up to
// 4.0.0; R4's technical correction 4.0.1 changed no resource's structure
// but is the version a current R4 server declares. This is the one change
// made to the official schema.
func addTechnicalCorrection(doc any) int {
	n := 0
	switch x := doc.(type) {
	case map[string]any:
		if enum, ok := x["enum"].([]any); ok && slices.Contains(enum, any("4.0.0")) && !slices.Contains(enum, any("4.0.1")) {
			x["enum"] = append(enum, "4.0.1")
			n++
		}
		for _, v := range x {
			n += addTechnicalCorrection(v)
		}
	case []any:
		for _, v := range x {
			n += addTechnicalCorrection(v)
		}
	}
	return n
}
