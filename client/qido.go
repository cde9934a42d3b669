package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
)

// Object is a DICOM JSON object (PS3.18 F.2), values left raw: tag
// ("00080018") → attribute.
type Object map[string]Attribute

// Attribute is one attribute of a DICOM JSON object.
type Attribute struct {
	VR    string            `json:"vr"`
	Value []json.RawMessage `json:"Value,omitempty"`
}

// Str is the first value of tag as a string ("" when absent or not a string).
func (o Object) Str(tag string) string {
	a, ok := o[tag]
	if !ok || len(a.Value) == 0 {
		return ""
	}
	var s string
	_ = json.Unmarshal(a.Value[0], &s)
	return s
}

// Int is the first value of tag as an integer (0 when absent or not a number).
func (o Object) Int(tag string) int64 {
	a, ok := o[tag]
	if !ok || len(a.Value) == 0 {
		return 0
	}
	var n float64
	if json.Unmarshal(a.Value[0], &n) != nil {
		return 0
	}
	return int64(n)
}

// Items are the items of the sequence tag (unreadable items left out).
func (o Object) Items(tag string) []Object {
	var out []Object
	for _, raw := range o[tag].Value {
		var item Object
		if json.Unmarshal(raw, &item) == nil {
			out = append(out, item)
		}
	}
	return out
}

// Search sends a QIDO-RS query: path is relative to the DICOMweb root
// ("/studies", "/studies/{uid}/instances", "/instances"), query its
// parameters. No match (204, or 404 for a study the server does not hold)
// is an empty answer; any other failed status an *Error.
func (c *Client) Search(ctx context.Context, path string, query url.Values) ([]Object, error) {
	if c.DICOMweb == "" {
		return nil, fmt.Errorf("client: no DICOMweb URL to search %s", path)
	}
	u := strings.TrimRight(c.DICOMweb, "/") + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	body, err := c.get(ctx, u, "application/dicom+json", true)
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, nil
	}
	var page []Object
	if err := json.Unmarshal(body, &page); err != nil {
		return nil, fmt.Errorf("unreadable QIDO-RS answer: %w", err)
	}
	return page, nil
}

// StudyInstances lists the SOP Instance UIDs of a study in the order the
// server gives them, duplicates kept (so that a caller can detect them),
// following pages of pageSize until a page brings nothing new.
func (c *Client) StudyInstances(ctx context.Context, studyUID string, pageSize int) ([]string, error) {
	var uids []string
	seen := map[string]bool{}
	path := "/studies/" + url.PathEscape(studyUID) + "/instances"
	for offset := 0; ; {
		page, err := c.Search(ctx, path, url.Values{
			"limit": {fmt.Sprint(pageSize)}, "offset": {fmt.Sprint(offset)}, "includefield": {"00080018"},
		})
		if err != nil {
			return nil, err
		}
		fresh := 0
		for _, o := range page {
			uid := o.Str("00080018")
			if uid == "" {
				continue
			}
			if !seen[uid] {
				seen[uid] = true
				fresh++
			}
			uids = append(uids, uid)
		}
		if len(page) == 0 || fresh == 0 {
			return uids, nil
		}
		offset += len(page)
	}
}
