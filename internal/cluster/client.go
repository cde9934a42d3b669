package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"time"

	"github.com/dicom-gateway/gateway/internal/synth"
)

// Transfer is the part of the admin API's transfer object the tests read.
type Transfer struct {
	ID             string `json:"id"`
	StudyUID       string `json:"study_uid"`
	Destination    string `json:"destination"`
	State          string `json:"state"`
	InstancesTotal int    `json:"instances_total"`
	InstancesSent  int    `json:"instances_sent"`
	BytesSent      int64  `json:"bytes_sent"`
	Attempts       int    `json:"attempts"`
	LastError      string `json:"last_error"`
	UpdatedAt      string `json:"updated_at"`
	// Instances is the per-instance progress (GetTransfer only): for an
	// outgoing transfer, state "sent" means the destination acknowledged it.
	Instances []struct {
		SOPInstanceUID string `json:"sop_instance_uid"`
		State          string `json:"state"`
	} `json:"instances"`
}

// Finished reports whether the transfer is in a final state.
func (t *Transfer) Finished() bool {
	return t.State == "completed" || t.State == "failed" || t.State == "cancelled"
}

// SHA256 returns the hex SHA-256 of an instance's bytes.
func SHA256(in synth.Instance) string {
	h := sha256.New()
	if _, err := in.WriteTo(h); err != nil {
		panic(err) // writing to a hash cannot fail
	}
	return hex.EncodeToString(h.Sum(nil))
}

// StowBody streams insts as a multipart/related STOW-RS body; it returns
// the body and its Content-Type.
func StowBody(insts []synth.Instance) (io.ReadCloser, string) {
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		for _, in := range insts {
			part, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/dicom"}})
			if err == nil {
				_, err = in.WriteTo(part)
			}
			if err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		pw.CloseWithError(mw.Close())
	}()
	return pr, `multipart/related; type="application/dicom"; boundary=` + mw.Boundary()
}

// Stow stores insts at the gateway base URL with one STOW-RS request and
// returns the status, the answer's Retry-After and body.
func Stow(ctx context.Context, c *http.Client, base string, insts []synth.Instance) (status int, retryAfter string, body []byte, err error) {
	rd, ct := StowBody(insts)
	defer rd.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/dicomweb/studies", rd)
	if err != nil {
		return 0, "", nil, err
	}
	req.Header.Set("Content-Type", ct)
	req.Header.Set("Accept", "application/dicom+json")
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, resp.Header.Get("Retry-After"), body, err
}

// StowAll stores insts and fails unless every one was stored (200).
func StowAll(ctx context.Context, base string, insts []synth.Instance) error {
	status, _, body, err := Stow(ctx, http.DefaultClient, base, insts)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("STOW %d instances to %s: %d %s", len(insts), base, status, snippet(body))
	}
	return nil
}

// GetJSON GETs u and decodes a 200 answer into out.
func GetJSON(ctx context.Context, c *http.Client, u string, out any) error {
	return doJSON(ctx, c, http.MethodGet, u, nil, http.StatusOK, out)
}

func doJSON(ctx context.Context, c *http.Client, method, u string, in any, want int, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, snippet(b))
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}

func snippet(b []byte) string {
	if len(b) > 500 {
		b = b[:500]
	}
	return string(bytes.TrimSpace(b))
}

// CreateTransfer asks the gateway at base to send study to destination.
func CreateTransfer(ctx context.Context, base, study, destination string) (*Transfer, error) {
	var t Transfer
	err := doJSON(ctx, http.DefaultClient, http.MethodPost, base+"/api/v1/transfers",
		map[string]string{"study_uid": study, "destination": destination, "priority": "normal"}, http.StatusAccepted, &t)
	return &t, err
}

// GetTransfer reads one transfer.
func GetTransfer(ctx context.Context, base, id string) (*Transfer, error) {
	var t Transfer
	err := GetJSON(ctx, http.DefaultClient, base+"/api/v1/transfers/"+url.PathEscape(id), &t)
	return &t, err
}

// ListTransfers lists the transfers of a study (all of them when study is "").
func ListTransfers(ctx context.Context, c *http.Client, base, study string) ([]Transfer, error) {
	var out struct {
		Transfers []Transfer `json:"transfers"`
	}
	u := base + "/api/v1/transfers?limit=10000"
	if study != "" {
		u += "&study_uid=" + url.QueryEscape(study)
	}
	err := GetJSON(ctx, c, u, &out)
	return out.Transfers, err
}

// WaitTransfer polls the transfer until it is finished, stop (may be nil)
// returns true for the state seen, ctx ends or timeout passes.
func WaitTransfer(ctx context.Context, base, id string, timeout time.Duration, stop func(*Transfer) bool) (*Transfer, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last *Transfer
	for {
		t, err := GetTransfer(ctx, base, id)
		if err == nil {
			last = t
			if t.Finished() || (stop != nil && stop(t)) {
				return t, nil
			}
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("transfer %s not finished: %w (last seen %+v, last error %v)", id, ctx.Err(), last, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// StudySHA256 returns the SHA-256 of every instance of study the gateway
// holds, by SOP Instance UID; recompute reads the bytes from storage.
func StudySHA256(ctx context.Context, c *http.Client, base, study string, recompute bool) (map[string]string, error) {
	var out struct {
		Instances map[string]string `json:"instances"`
	}
	u := base + "/api/v1/studies/" + url.PathEscape(study) + "/sha256"
	if recompute {
		u += "?recompute=true"
	}
	err := GetJSON(ctx, c, u, &out)
	return out.Instances, err
}

// QIDOInstances returns the SOP Instance UIDs QIDO-RS lists for study, in
// the order given (duplicates kept, so that a caller can detect them).
func QIDOInstances(ctx context.Context, c *http.Client, base, study string) ([]string, error) {
	var out []map[string]struct {
		Value []any `json:"Value"`
	}
	u := base + "/dicomweb/studies/" + url.PathEscape(study) + "/instances?limit=10000"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/dicom+json")
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusNoContent:
		return nil, nil
	case http.StatusOK:
	default:
		return nil, fmt.Errorf("QIDO %s: %s: %s", u, resp.Status, snippet(b))
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("QIDO %s: %w", u, err)
	}
	uids := make([]string, 0, len(out))
	for _, o := range out {
		if v := o["00080018"].Value; len(v) > 0 {
			uids = append(uids, fmt.Sprint(v[0]))
		}
	}
	return uids, nil
}

// AuditVerify calls GET /api/v1/audit/verify.
func AuditVerify(ctx context.Context, c *http.Client, base string) (ok bool, records int, detail string, err error) {
	var out struct {
		OK          bool   `json:"ok"`
		Records     int    `json:"records"`
		FirstBroken string `json:"first_broken"`
		Reason      string `json:"reason"`
	}
	if err := GetJSON(ctx, c, base+"/api/v1/audit/verify", &out); err != nil {
		return false, 0, "", err
	}
	return out.OK, out.Records, out.FirstBroken + " " + out.Reason, nil
}
