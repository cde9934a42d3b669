package fhir

import (
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/dicom-gateway/gateway/gateway"
)

// Page sizes of an ImagingStudy search (_count): each study of a page costs
// a listing of its instances, so pages are small.
const (
	DefaultCount = 20
	MaxCount     = 100
	// MaxOffset bounds how deep paging goes: a search by NHS number merges
	// two index searches of offset+count studies each.
	MaxOffset = 10_000
)

// System URIs of the identifiers and codes the resources carry.
const (
	systemDICOMUID      = "urn:dicom:uid"
	systemDCM           = "http://dicom.nema.org/resources/ontology/DCM"
	systemRFC3986       = "urn:ietf:rfc:3986"
	systemIdentifierTyp = "http://terminology.hl7.org/CodeSystem/v2-0203"
	systemConnection    = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
)

// search is a parsed ImagingStudy search: QIDO-RS study-level parameters
// for the index, plus what the index cannot express.
type search struct {
	// qido are the study-level QIDO-RS matching keys.
	qido url.Values
	// national is the NHS number searched for ("" when patient.identifier
	// names another system): a study matches when its Patient ID is that
	// number with a national issuer, or an Other Patient IDs Sequence item
	// carries it.
	national string
	// used are the FHIR parameters applied, for the self link.
	used          url.Values
	count, offset int
}

// parseSearch reads the FHIR search parameters of an ImagingStudy search.
// Unknown parameters are ignored (FHIR's lenient handling) and left out of
// the self link; malformed values are ErrInvalid.
func parseSearch(params url.Values) (*search, error) {
	s := &search{qido: url.Values{}, used: url.Values{}, count: DefaultCount}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var low, high string // StudyDate bounds from started, YYYYMMDD
	for _, key := range keys {
		for _, v := range params[key] {
			var err error
			switch key {
			case "patient.identifier", "patient:Patient.identifier":
				err = s.patientIdentifier(v)
			case "identifier":
				err = s.identifier(v)
			case "_id":
				err = s.id(v)
			case "modality":
				err = s.modality(v)
			case "started":
				var lo, hi string
				lo, hi, err = startedRange(v)
				if err == nil {
					low, high = maxStr(low, lo), minStr(high, hi)
				}
			case "_count":
				n, e := strconv.Atoi(v)
				if e != nil || n < 0 {
					err = fmt.Errorf("_count=%q: not a non-negative integer: %w", v, gateway.ErrInvalid)
				}
				s.count = min(n, MaxCount)
			case "_offset":
				n, e := strconv.Atoi(v)
				if e != nil || n < 0 || n > MaxOffset {
					err = fmt.Errorf("_offset=%q: not an integer from 0 to %d: %w", v, MaxOffset, gateway.ErrInvalid)
				}
				if err != nil {
					return nil, err
				}
				s.offset = n
				continue // the paging links set it
			case "_format":
				// settled by negotiate
			default:
				continue
			}
			if err != nil {
				return nil, err
			}
			if key != "_count" && key != "_format" {
				s.used.Add(key, v)
			}
		}
	}
	if low != "" || high != "" {
		if low != "" && high != "" && low > high {
			// Disjoint ranges match nothing; a date no study has says so.
			low, high = "99991231", "99991231"
		}
		s.qido.Set("StudyDate", low+"-"+high)
	}
	return s, nil
}

func maxStr(a, b string) string {
	if a == "" || b > a {
		return b
	}
	return a
}

func minStr(a, b string) string {
	if a == "" || (b != "" && b < a) {
		return b
	}
	return a
}

// tokenValue checks a token's value for characters QIDO would read as
// wildcards or list separators: a FHIR token matches exactly.
func tokenValue(param, v string) (string, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return "", fmt.Errorf("%s: empty value: %w", param, gateway.ErrInvalid)
	}
	if strings.ContainsAny(v, `*?\,`) || len(v) > 64 {
		// The value is not echoed: it may be a patient identifier.
		return "", fmt.Errorf("%s: not an identifier value (at most 64 characters, none of * ? \\ ,): %w", param, gateway.ErrInvalid)
	}
	return v, nil
}

// patientIdentifier maps patient.identifier=[system]|value. The NHS number
// system searches the national identifier wherever the instance carries it
// (NationalID); another system, or none, matches the Patient ID, and a
// system other than the bare value's must then equal its Issuer of
// Patient ID (written urn:oid:<issuer> for an OID issuer).
func (s *search) patientIdentifier(v string) error {
	system, value, hasSystem := strings.Cut(v, "|")
	if !hasSystem {
		value, system = system, ""
	}
	value, err := tokenValue("patient.identifier", value)
	if err != nil {
		return err
	}
	if s.national != "" || s.qido.Has("PatientID") {
		return fmt.Errorf("patient.identifier given twice: %w", gateway.ErrInvalid)
	}
	switch {
	case system == gateway.NHSNumberSystem:
		s.national = value
	case system == "":
		s.qido.Set("PatientID", value)
	default:
		issuer, err := tokenValue("patient.identifier system", strings.TrimPrefix(system, "urn:oid:"))
		if err != nil {
			return err
		}
		s.qido.Set("PatientID", value)
		s.qido.Set("IssuerOfPatientID", issuer)
	}
	return nil
}

// identifier maps identifier=[urn:dicom:uid|]urn:oid:<Study Instance UID>.
func (s *search) identifier(v string) error {
	system, value, hasSystem := strings.Cut(v, "|")
	if !hasSystem {
		value = system
	} else if system != "" && system != systemDICOMUID {
		return fmt.Errorf("identifier system %q: only %s (urn:oid:<Study Instance UID>) is searchable: %w", system, systemDICOMUID, gateway.ErrInvalid)
	}
	uid, ok := strings.CutPrefix(value, "urn:oid:")
	if !ok {
		return fmt.Errorf("identifier=%q: want urn:oid:<Study Instance UID>: %w", v, gateway.ErrInvalid)
	}
	return s.studyUID("identifier", uid)
}

// id maps _id, the resource id, which is the Study Instance UID.
func (s *search) id(v string) error {
	var uids []string
	for u := range strings.SplitSeq(v, ",") {
		uids = append(uids, strings.TrimSpace(u))
	}
	for _, u := range uids {
		if err := gateway.ValidateUID(u); err != nil {
			return fmt.Errorf("_id=%q: %w", v, err)
		}
	}
	return s.studyUID("_id", strings.Join(uids, ","))
}

func (s *search) studyUID(param, uids string) error {
	for u := range strings.SplitSeq(uids, ",") {
		if err := gateway.ValidateUID(u); err != nil {
			return fmt.Errorf("%s: %w", param, err)
		}
	}
	if prev := s.qido.Get("StudyInstanceUID"); prev != "" && prev != uids {
		// Two different studies asked for at once (AND) match nothing;
		// the QIDO list would match either.
		return fmt.Errorf("%s: only one study identity per search: %w", param, gateway.ErrInvalid)
	}
	s.qido.Set("StudyInstanceUID", uids)
	return nil
}

// modality maps modality=[system|]code[,…] (any of the codes) to
// ModalitiesInStudy.
func (s *search) modality(v string) error {
	var codes []string
	for tok := range strings.SplitSeq(v, ",") {
		system, code, hasSystem := strings.Cut(tok, "|")
		if !hasSystem {
			code = system
		} else if system != "" && system != systemDCM {
			return fmt.Errorf("modality system %q: only %s is known: %w", system, systemDCM, gateway.ErrInvalid)
		}
		code = strings.TrimSpace(code)
		if code == "" || len(code) > 16 || strings.ContainsAny(code, `*?\`) {
			return fmt.Errorf("modality=%q: not a DICOM modality code: %w", v, gateway.ErrInvalid)
		}
		codes = append(codes, code)
	}
	if s.qido.Has("ModalitiesInStudy") {
		return fmt.Errorf("modality given twice (list the codes in one, comma-separated): %w", gateway.ErrInvalid)
	}
	s.qido.Set("ModalitiesInStudy", strings.Join(codes, ","))
	return nil
}

// startedRange maps one started=[prefix]date to an inclusive StudyDate
// range (YYYYMMDD bounds, "" = open). The date is YYYY, YYYY-MM, YYYY-MM-DD
// or a dateTime, of which the day counts: StudyDate has no finer grain
// the index can range over. Prefixes: eq (default), ge, le, gt, lt.
func startedRange(v string) (low, high string, err error) {
	prefix := "eq"
	if len(v) >= 2 && v[0] >= 'a' && v[0] <= 'z' {
		prefix, v = v[:2], v[2:]
	}
	first, last, err := dateSpan(v)
	if err != nil {
		return "", "", fmt.Errorf("started=%s%s: %v: %w", prefix, v, err, gateway.ErrInvalid)
	}
	const day = "20060102"
	switch prefix {
	case "eq":
		return first.Format(day), last.Format(day), nil
	case "ge":
		return first.Format(day), "", nil
	case "le":
		return "", last.Format(day), nil
	case "gt":
		return last.AddDate(0, 0, 1).Format(day), "", nil
	case "lt":
		return "", first.AddDate(0, 0, -1).Format(day), nil
	}
	return "", "", fmt.Errorf("started: prefix %q: supported are eq, ge, le, gt, lt: %w", prefix, gateway.ErrInvalid)
}

// dateSpan returns the first and last day a FHIR date or dateTime denotes.
func dateSpan(v string) (first, last time.Time, err error) {
	if d, _, ok := strings.Cut(v, "T"); ok {
		v = d
	}
	switch len(v) {
	case 4:
		t, err := time.Parse("2006", v)
		return t, t.AddDate(1, 0, -1), err
	case 7:
		t, err := time.Parse("2006-01", v)
		return t, t.AddDate(0, 1, -1), err
	case 10:
		t, err := time.Parse("2006-01-02", v)
		return t, t, err
	}
	return first, last, fmt.Errorf("not a date YYYY[-MM[-DD]]")
}
