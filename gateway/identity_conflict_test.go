package gateway_test

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/backendtest"
	"github.com/dicom-gateway/gateway/internal/synth"
	"github.com/dicom-gateway/gateway/storage/storagetest"
)

// TestIdentityConflictSearches: instances of three patients filed under
// one Study Instance UID (A, then B, then A again, then C, each its own
// series) are all stored and the study is flagged; a search by any of the
// three Patient IDs finds the study, shown under the ID searched for with
// that patient's own name, without the latest patient's name or birth date
// beside it, and with the flag naming the other two. A search by any of
// the three names finds it too, as that patient's. A search pairing one
// patient's ID with another's birth date or name finds nothing. Run on
// both backend families
// through the Ingester, which sets the flag.
func TestIdentityConflictSearches(t *testing.T) {
	for _, kind := range []string{backendtest.Embedded, backendtest.Production} {
		t.Run(kind, func(t *testing.T) {
			b := backendtest.Open(t, kind, backendtest.Options{})
			in := &gateway.Ingester{Blobs: b.Blobs, Index: b.Index}
			study := synth.UID(87, 1)
			mk := func(i uint64, pid, issuer, name, birth string) synth.Instance {
				return synth.Instance{PatientName: name, PatientID: pid, IssuerOfPatientID: issuer, PatientBirthDate: birth,
					StudyInstanceUID: study, SeriesInstanceUID: synth.UID(87, 1, i), SOPInstanceUID: synth.UID(87, 1, i, 1),
					Rows: 4, Columns: 4, StudyDate: "20240101"}
			}
			storeAll(t, in,
				mk(1, "A100", "SURREY", "Alpha^Ann", "19500101"),
				mk(2, "B200", "HAMPSHIRE", "Beta^Bob", "19600101"),
				mk(3, "A100", "SURREY", "Alpha^Ann", "19500101"),
				mk(4, "C300", "KENT", "Gamma^Cy", "19700101"),
			)
			search := func(level gateway.QueryLevel, raw string) []dicomcodec.Dataset {
				t.Helper()
				return searchItems(t, b.Index, level, "", raw+"&includefield=all")
			}
			for pid, want := range map[string]struct{ issuer, name, birth string }{
				"A100": {"SURREY", "Alpha^Ann", ""}, "B200": {"HAMPSHIRE", "Beta^Bob", ""}, "C300": {"KENT", "Gamma^Cy", "19700101"},
			} {
				items := search(gateway.LevelStudy, "PatientID="+pid)
				if len(items) != 1 {
					t.Errorf("PatientID=%s: %d studies, want the flagged one", pid, len(items))
					continue
				}
				d := items[0]
				others, flagged := gateway.IdentityConflicts(d)
				name := ""
				if pns := gateway.PersonNamesOf(d[dicomcodec.TagPatientName]); len(pns) > 0 {
					name = pns[0].Alphabetic
				}
				if d.String(dicomcodec.TagPatientID) != pid || d.String(gateway.TagIssuerOfPatientID) != want.issuer ||
					name != want.name || d.String(dicomcodec.TagPatientBirthDate) != want.birth || !flagged || len(others) != 2 {
					t.Errorf("PatientID=%s shows ID %q issuer %q name %q birth %q, flag %v naming %v", pid, d.String(dicomcodec.TagPatientID),
						d.String(gateway.TagIssuerOfPatientID), name, d.String(dicomcodec.TagPatientBirthDate), flagged, others)
				}
				for _, o := range others {
					if o.ID == pid {
						t.Errorf("PatientID=%s: the flag names the patient shown: %v", pid, others)
					}
				}
				if series := search(gateway.LevelSeries, "PatientID="+pid); len(series) != 4 || series[0].String(dicomcodec.TagPatientID) != pid {
					t.Errorf("PatientID=%s: %d series, want the study's 4 under that ID", pid, len(series))
				}
			}
			for raw, want := range map[string]int{
				"PatientID=A100&IssuerOfPatientID=SURREY": 1, "PatientID=A100&IssuerOfPatientID=KENT": 0,
				"PatientID=A100&PatientBirthDate=19700101": 0, "PatientID=B200&PatientName=Gamma*": 0,
				"PatientID=C300&PatientBirthDate=19700101": 1, "PatientID=D400": 0,
				// Each patient's own name finds the study, as theirs; a
				// name with another patient's ID does not.
				"PatientName=Alpha*": 1, "PatientName=beta^bob": 1, "PatientName=Gamma*": 1, "PatientName=Delta*": 0,
				"PatientID=A100&PatientName=Alpha*": 1, "PatientID=A100&PatientName=Beta*": 0,
			} {
				if got := len(search(gateway.LevelStudy, raw)); got != want {
					t.Errorf("%s: %d studies, want %d", raw, got, want)
				}
			}
			for name, pid := range map[string]string{"Alpha*": "A100", "beta^bob": "B200", "Gamma*": "C300", "Betta&fuzzymatching=true": "B200"} {
				if items := search(gateway.LevelStudy, "PatientName="+name); len(items) != 1 || items[0].String(dicomcodec.TagPatientID) != pid {
					t.Errorf("PatientName=%s: %d studies, want 1 shown as %s", name, len(items), pid)
				}
			}
		})
	}
}

// TestIdentityConflictFlagNotTakenFromTheSender: an instance that carries
// this gateway's flag in its own bytes ((0009,0010) DICOM GATEWAY,
// (0009,1001) IDENTITY CONFLICT\X999) is not flagged, and a search by the
// Patient ID it names does not find its study: the flag is the index's
// record of what arrived, never the sender's claim.
func TestIdentityConflictFlagNotTakenFromTheSender(t *testing.T) {
	b := backendtest.Open(t, backendtest.Embedded, backendtest.Options{})
	in := &gateway.Ingester{Blobs: b.Blobs, Index: b.Index}
	lo := func(s string) []byte {
		if len(s)%2 == 1 {
			s += " "
		}
		return []byte(s)
	}
	spoof := synth.Study(synth.StudySpec{Seed: 871})[0]
	spoof.Extra = []synth.Element{{Tag: 0x00090010, VR: "LO", Value: lo(gateway.GatewayPrivateCreator)},
		{Tag: 0x00091001, VR: "LO", Value: lo(gateway.IdentityConflictValue + `\X999\`)}}
	rec, err := in.Store(t.Context(), spoof.Reader(), gateway.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, flagged := gateway.IdentityConflicts(rec.Metadata); flagged {
		t.Errorf("the stored record carries the sender's flag")
	}
	if items := searchItems(t, b.Index, gateway.LevelStudy, "", "PatientID=X999"); len(items) != 0 {
		t.Errorf("PatientID=X999 (named by the sender's flag): %d studies; want none", len(items))
	}
}

// TestIdentityConflictReplacements: with DuplicateReplace, an instance
// replaced by other bytes keeps the study flagged and found by the other
// patient's ID, whichever patient's instance is replaced (before, the
// replacement's index entry went in unflagged and that patient lost the
// study); and a study's only instance replaced under a corrected Patient ID
// is not a conflict: the old ID no longer finds it.
func TestIdentityConflictReplacements(t *testing.T) {
	b := backendtest.Open(t, backendtest.Embedded, backendtest.Options{})
	in := &gateway.Ingester{Blobs: b.Blobs, Index: b.Index, DuplicatePolicy: gateway.DuplicateReplace}
	mk := func(study, i uint64, pid string) synth.Instance {
		return synth.Instance{PatientName: "Doe^" + pid, PatientID: pid, StudyInstanceUID: synth.UID(88, study),
			SeriesInstanceUID: synth.UID(88, study, i), SOPInstanceUID: synth.UID(88, study, i, 1), Rows: 4, Columns: 4}
	}
	otherBytes := func(inst synth.Instance) synth.Instance {
		inst.PixelSeed++
		return inst
	}
	first, second := mk(1, 1, "A100"), mk(1, 2, "B200")
	storeAll(t, in, first, second)
	for _, replaced := range []synth.Instance{second, first} {
		storeAll(t, in, otherBytes(replaced))
		for _, pid := range []string{"A100", "B200"} {
			items := searchItems(t, b.Index, gateway.LevelStudy, "", "PatientID="+pid)
			if len(items) != 1 {
				t.Errorf("after replacing %s's instance: PatientID=%s finds %d studies, want the flagged study", replaced.PatientID, pid, len(items))
				continue
			}
			if _, flagged := gateway.IdentityConflicts(items[0]); !flagged {
				t.Errorf("after replacing %s's instance: the study lost its flag", replaced.PatientID)
			}
			if items := searchItems(t, b.Index, gateway.LevelStudy, "", "PatientName=Doe^"+pid); len(items) != 1 || items[0].String(dicomcodec.TagPatientID) != pid {
				t.Errorf("after replacing %s's instance: PatientName=Doe^%s finds %d studies, want the flagged study as %s's", replaced.PatientID, pid, len(items), pid)
			}
		}
	}
	// A study of two A100 instances, one replaced by bytes of B200: a
	// conflict, flagged and audited.
	var audit conflictEvents
	in.Auditor = &audit
	storeAll(t, in, mk(3, 1, "A100"), mk(3, 2, "A100"))
	intruder := mk(3, 2, "B200")
	storeAll(t, in, intruder)
	for _, pid := range []string{"A100", "B200"} {
		if got := searchItems(t, b.Index, gateway.LevelStudy, "", "StudyInstanceUID="+synth.UID(88, 3)+"&PatientID="+pid); len(got) != 1 {
			t.Errorf("after B200's bytes replaced an A100 instance: PatientID=%s finds %d studies, want 1", pid, len(got))
		}
		if got := searchItems(t, b.Index, gateway.LevelStudy, "", "StudyInstanceUID="+synth.UID(88, 3)+"&PatientName=Doe^"+pid); len(got) != 1 || got[0].String(dicomcodec.TagPatientID) != pid {
			t.Errorf("after B200's bytes replaced an A100 instance: PatientName=Doe^%s finds %d studies, want 1", pid, len(got))
		}
	}
	if n := audit.count(); n != 1 {
		t.Errorf("%d identity.conflict events for the replacement, want 1", n)
	}
	wrong := mk(2, 1, "WRONG1")
	right := wrong
	right.PatientID = "RIGHT1"
	storeAll(t, in, wrong, right)
	if got := searchItems(t, b.Index, gateway.LevelStudy, "", "PatientID=RIGHT1"); len(got) != 1 {
		t.Fatalf("PatientID=RIGHT1 after the correction: %d studies", len(got))
	} else if _, flagged := gateway.IdentityConflicts(got[0]); flagged {
		t.Errorf("a corrected Patient ID flagged the study as a conflict")
	}
	if got := searchItems(t, b.Index, gateway.LevelStudy, "", "PatientID=WRONG1"); len(got) != 0 {
		t.Errorf("PatientID=WRONG1 still finds the corrected study")
	}
	if n := audit.count(); n != 1 {
		t.Errorf("the correction was audited as an identity conflict (%d events)", n)
	}
}

// TestIdentityConflictFlagBounded: a study into which instances of 18
// patients were filed names at most 16 others in its flag, keeping the
// first patient (usually the study's own) and the most recent ones: the
// first patient's search still finds it. The flag travels with its
// private creator even when a search returns only the flag.
func TestIdentityConflictFlagBounded(t *testing.T) {
	b := backendtest.Open(t, backendtest.Embedded, backendtest.Options{})
	in := &gateway.Ingester{Blobs: b.Blobs, Index: b.Index}
	study := synth.UID(89, 1)
	for i := uint64(1); i <= 18; i++ {
		inst := synth.Instance{PatientID: fmt.Sprintf("P%02d", i), StudyInstanceUID: study, SeriesInstanceUID: synth.UID(89, 1, i),
			SOPInstanceUID: synth.UID(89, 1, i, 1), Rows: 4, Columns: 4, Extra: []synth.Element{{Tag: 0x00081080, VR: "LO", Value: []byte(fmt.Sprintf("DX%02d", i))}}}
		storeAll(t, in, inst)
	}
	search := func(level gateway.QueryLevel, studyUID, raw string) []dicomcodec.Dataset {
		t.Helper()
		return searchItems(t, b.Index, level, studyUID, raw)
	}
	all := search(gateway.LevelStudy, "", "StudyInstanceUID="+study)
	others, _ := gateway.IdentityConflicts(all[0])
	if len(others) != 16 || others[0].ID != "P01" || others[15].ID != "P17" {
		t.Errorf("the flag names %v: want 16, the first patient P01 first and P17 last", others)
	}
	for pid, want := range map[string]int{"P01": 1, "P17": 1, "P18": 1, "P03": 1, "P02": 0} {
		if got := len(search(gateway.LevelStudy, "", "PatientID="+pid)); got != want {
			t.Errorf("PatientID=%s: %d studies, want %d", pid, got, want)
		}
	}
	// The Admitting Diagnoses Description describes the latest patient
	// (P18): a view of P01 neither shows nor matches it.
	if got := search(gateway.LevelStudy, "", "PatientID=P01&includefield=00081080"); len(got) != 1 || got[0].String("00081080") != "" {
		t.Errorf("P01's view shows another patient's diagnosis: %v", got)
	}
	if got := len(search(gateway.LevelStudy, "", "PatientID=P01&AdmittingDiagnosesDescription=DX18")); got != 0 {
		t.Errorf("P01 matched with P18's diagnosis: %d studies", got)
	}
	series := search(gateway.LevelSeries, study, "includefield=00091001")
	if len(series) == 0 || series[0].String(gateway.TagGatewayPrivateCreator) != gateway.GatewayPrivateCreator {
		t.Fatalf("series with only the flag asked for: the private creator is missing: %v", series)
	}
	if _, flagged := gateway.IdentityConflicts(series[0]); !flagged {
		t.Errorf("series result not read as flagged")
	}
}

// TestIdentityConflictRestatedAfterDelete: a study holding three patients
// (A, B, then C last) is corrected by deleting the misfiled series, as a
// PACS admin would. After C's series is deleted the study is no longer
// found by C's ID and shows B, the latest left, flagged naming A only;
// after B's too it is A's study again, unflagged, found by A alone, also
// when A's latest instance arrived flagged after B's. Each
// change of the identities the study is listed under is audited; a delete
// in an unflagged study changes nothing and records no such event. Run on
// both backend families.
func TestIdentityConflictRestatedAfterDelete(t *testing.T) {
	for _, kind := range []string{backendtest.Embedded, backendtest.Production} {
		t.Run(kind, func(t *testing.T) {
			b := backendtest.Open(t, kind, backendtest.Options{})
			clock := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
			in := &gateway.Ingester{Blobs: b.Blobs, Index: b.Index, Now: func() time.Time { clock = clock.Add(time.Second); return clock }}
			events := &restatedEvents{}
			svc := gateway.NewServices(gateway.ServiceDeps{Blobs: b.Blobs, Index: b.Index, Ingester: in, Auditor: events})
			admin := gateway.Caller{Principal: gateway.Principal{Name: "pacs-admin"}}
			study := synth.UID(88, 1)
			mk := func(i uint64, pid, issuer, name string) synth.Instance {
				return synth.Instance{PatientName: name, PatientID: pid, IssuerOfPatientID: issuer,
					StudyInstanceUID: study, SeriesInstanceUID: synth.UID(88, 1, i), SOPInstanceUID: synth.UID(88, 1, i, 1),
					Rows: 4, Columns: 4, StudyDate: "20240101"}
			}
			storeAll(t, in, mk(1, "A100", "SURREY", "Alpha^Ann"), mk(2, "B200", "HAMPSHIRE", "Beta^Bob"), mk(3, "C300", "KENT", "Gamma^Cy"))
			deleteSeries := func(i uint64) {
				t.Helper()
				if _, _, err := svc.Delete.Delete(t.Context(), admin, study, synth.UID(88, 1, i), ""); err != nil {
					t.Fatal(err)
				}
			}
			// expect checks what a search by each Patient ID finds: nothing,
			// or the study with the name shown and the IDs the flag names.
			type view = struct {
				found  bool
				name   string
				others []string
			}
			expect := func(step string, want map[string]view) {
				t.Helper()
				for pid, w := range want {
					items := searchItems(t, b.Index, gateway.LevelStudy, "", "PatientID="+pid+"&includefield=all")
					if !w.found {
						if len(items) != 0 {
							t.Errorf("%s: PatientID=%s finds %d studies, want none", step, pid, len(items))
						}
						continue
					}
					if len(items) != 1 {
						t.Errorf("%s: PatientID=%s finds %d studies, want 1", step, pid, len(items))
						continue
					}
					name := ""
					if pns := gateway.PersonNamesOf(items[0][dicomcodec.TagPatientName]); len(pns) > 0 {
						name = pns[0].Alphabetic
					}
					others, flagged := gateway.IdentityConflicts(items[0])
					var ids []string
					for _, o := range others {
						ids = append(ids, o.ID)
					}
					if name != w.name || flagged != (len(w.others) > 0) || !slices.Equal(ids, w.others) {
						t.Errorf("%s: PatientID=%s shows name %q, flag %v naming %v; want %q naming %v", step, pid, name, flagged, ids, w.name, w.others)
					}
				}
			}
			deleteSeries(3)
			// A100 is found as the other identity of B's study, under A's name.
			expect("C deleted", map[string]view{"A100": {true, "Alpha^Ann", []string{"B200"}}, "B200": {true, "Beta^Bob", []string{"A100"}}, "C300": {}})
			if got := events.restated(); len(got) != 1 || !slices.Contains(got[0].PatientIDs, "C300") || got[0].Detail["flagged"] != true {
				t.Fatalf("C deleted: restated events %+v, want one naming C300, still flagged", got)
			}
			deleteSeries(2)
			expect("B deleted", map[string]view{"A100": {true, "Alpha^Ann", nil}, "B200": {}, "C300": {}})
			if got := events.restated(); len(got) != 2 || got[1].Detail["flagged"] != false {
				t.Fatalf("B deleted: restated events %+v, want a second, unflagged", got)
			}
			// An unflagged study: a delete restates nothing.
			storeAll(t, in, mk(4, "A100", "SURREY", "Alpha^Ann"))
			deleteSeries(4)
			expect("A's second series deleted", map[string]view{"A100": {true, "Alpha^Ann", nil}})
			if got := events.restated(); len(got) != 2 {
				t.Errorf("a delete in an unflagged study recorded %d restated events in all, want 2", len(got))
			}
			// B arrives again, then A twice: A's instances carry the flag
			// naming B, which the delete of B's series drops.
			storeAll(t, in, mk(6, "B200", "HAMPSHIRE", "Beta^Bob"), mk(5, "A100", "SURREY", "Alpha^Ann"), mk(7, "A100", "SURREY", "Alpha^Ann"))
			expect("B again", map[string]view{"A100": {true, "Alpha^Ann", []string{"B200"}}, "B200": {true, "Beta^Bob", []string{"A100"}}})
			deleteSeries(6)
			expect("B deleted again", map[string]view{"A100": {true, "Alpha^Ann", nil}, "B200": {}})
			if got := events.restated(); len(got) != 3 {
				t.Errorf("%d restated events in all, want 3", len(got))
			} else if got[2].Detail["complete"] != true {
				t.Errorf("restated event detail %v, want complete", got[2].Detail)
			}
			// A's instances, found one by one, no longer carry the flag that
			// named B when they arrived (series 5's record still does), nor
			// B's name.
			insts := searchItems(t, b.Index, gateway.LevelInstance, "", "PatientID=A100&includefield=all")
			if len(insts) != 3 {
				t.Errorf("PatientID=A100 at instance level: %d instances, want 3", len(insts))
			}
			for _, d := range insts {
				others, flagged := gateway.IdentityConflicts(d)
				if _, names := d[gateway.TagIdentityConflictNames]; flagged || names {
					t.Errorf("instance %s still flagged naming %v, or with names %v", d.String(dicomcodec.TagSOPInstanceUID), others, d[gateway.TagIdentityConflictNames])
				}
			}
		})
	}
}

// TestIdentityConflictRestatedWhileInstancesArrive: instances arriving in
// the study while a delete restates it keep their patients findable. One
// arrival (another patient's) after the first listing: the study ends
// listed under everyone left, the deleted patient's ID no more. An arrival
// after every listing, a new patient each time and the deleted patient
// (its misfiled series still being sent) after the last: the restatement
// gives up without dropping any of them. Run on both backend families.
func TestIdentityConflictRestatedWhileInstancesArrive(t *testing.T) {
	for _, kind := range []string{backendtest.Embedded, backendtest.Production} {
		for _, every := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/every-listing=%v", kind, every), func(t *testing.T) {
				b := backendtest.Open(t, kind, backendtest.Options{})
				clock := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
				var mu sync.Mutex
				in := &gateway.Ingester{Blobs: b.Blobs, Index: b.Index, Now: func() time.Time {
					mu.Lock()
					defer mu.Unlock()
					clock = clock.Add(time.Second)
					return clock
				}}
				study := synth.UID(89, 1)
				mk := func(i uint64, pid string) synth.Instance {
					return synth.Instance{PatientName: "Doe^" + pid, PatientID: pid, IssuerOfPatientID: "SURREY",
						StudyInstanceUID: study, SeriesInstanceUID: synth.UID(89, 1, i), SOPInstanceUID: synth.UID(89, 1, i, 1),
						Rows: 4, Columns: 4, StudyDate: "20240101"}
				}
				store := func(inst synth.Instance) {
					if _, err := in.Store(context.WithoutCancel(t.Context()), inst.Reader(), gateway.StoreOptions{}); err != nil {
						t.Error(err)
					}
				}
				for i, pid := range []string{"A100", "B200", "C300"} {
					store(mk(uint64(i+1), pid))
				}
				var arrived []string
				x := &arrivingIndex{Index: b.Index, arrive: func() {
					if len(arrived) > 0 && !every || len(arrived) >= 5 {
						return
					}
					// Every listing: new patients, then the deleted one
					// again (its misfiled series still being sent) after
					// the last round's listing.
					pid := fmt.Sprintf("E%d", len(arrived)+1)
					if len(arrived) == 4 {
						pid = "C300"
					}
					arrived = append(arrived, pid)
					store(mk(uint64(10+len(arrived)), pid))
				}}
				events := &restatedEvents{}
				svc := gateway.NewServices(gateway.ServiceDeps{Blobs: b.Blobs, Index: x, Ingester: in, Auditor: events})
				admin := gateway.Caller{Principal: gateway.Principal{Name: "pacs-admin"}}
				if _, _, err := svc.Delete.Delete(t.Context(), admin, study, synth.UID(89, 1, 3), ""); err != nil {
					t.Fatal(err)
				}
				if n := len(events.restated()); n != 1 {
					t.Errorf("%d identity.restated events, want the one rewrite audited (also when the restatement gave up)", n)
				}
				if len(arrived) == 0 || every && len(arrived) < 5 {
					t.Fatalf("%d arrivals during the restatement", len(arrived))
				}
				for _, pid := range append([]string{"A100", "B200"}, arrived...) {
					if items := searchItems(t, b.Index, gateway.LevelStudy, "", "PatientID="+pid); len(items) != 1 {
						t.Errorf("PatientID=%s: %d studies, want the study its instance is in", pid, len(items))
					}
					if items := searchItems(t, b.Index, gateway.LevelStudy, "", "PatientName=Doe^"+pid); len(items) != 1 || items[0].String(dicomcodec.TagPatientID) != pid {
						t.Errorf("PatientName=Doe^%s: %d studies, want the study its instance is in", pid, len(items))
					}
				}
				if !every {
					if items := searchItems(t, b.Index, gateway.LevelStudy, "", "PatientID=C300"); len(items) != 0 {
						t.Errorf("PatientID=C300 still finds the study its instances were deleted from")
					}
				}
			})
		}
	}
}

// TestDeleteRestatesShownInstance: in a study of one patient, deleting the
// instance it shows (written last, filed with a wrong accession number and
// description, its stored time earlier than the others') makes the study
// show the latest instance left, and the wrong accession number no longer
// finds it; deleting an instance the study does not show rewrites nothing;
// another patient's instance indexed between the restatement's listing
// and its rewrite (stamped earlier still) is never overwritten; deleting
// the shown one of two look-alike instances rewrites nothing; and a study
// holding two patients without a flag (as the race fixed on 2026-12-06
// could leave one) is flagged when its shown instance is deleted, the
// change audited. Both backend families.
func TestDeleteRestatesShownInstance(t *testing.T) {
	for _, kind := range []string{backendtest.Embedded, backendtest.Production} {
		t.Run(kind, func(t *testing.T) {
			b := backendtest.Open(t, kind, backendtest.Options{})
			clock := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
			var (
				mu   sync.Mutex
				back time.Duration // the next instance is stamped this long before the clock
			)
			now := func() time.Time {
				mu.Lock()
				defer mu.Unlock()
				clock = clock.Add(time.Second)
				at := clock.Add(-back)
				back = 0
				return at
			}
			// stampEarlier makes the next instance's stored time earlier
			// than every instance's before it, though it is written after
			// them (a concurrent upload, another replica's clock).
			stampEarlier := func() { mu.Lock(); back = time.Hour; mu.Unlock() }
			in := &gateway.Ingester{Blobs: b.Blobs, Index: b.Index, Now: now}
			events := &restatedEvents{}
			x := &racedIndex{Index: b.Index}
			svc := gateway.NewServices(gateway.ServiceDeps{Blobs: b.Blobs, Index: x, Ingester: in, Auditor: events})
			admin := gateway.Caller{Principal: gateway.Principal{Name: "pacs-admin"}}
			mk := func(st, i uint64, pid, accession, description string) synth.Instance {
				inst := patientInstance(97, st, i, pid)
				inst.AccessionNumber, inst.StudyDescription = accession, description
				return inst
			}
			del := func(st, i uint64) {
				t.Helper()
				if _, _, err := svc.Delete.Delete(t.Context(), admin, synth.UID(97, st), synth.UID(97, st, i), ""); err != nil {
					t.Fatal(err)
				}
			}
			shows := func(step, query, description string) {
				t.Helper()
				items := searchItems(t, b.Index, gateway.LevelStudy, "", query+"&includefield=all")
				if len(items) != 1 || items[0].String("00081030") != description {
					t.Errorf("%s: %s finds %d studies %v, want one showing %q", step, query, len(items), items, description)
				}
			}

			storeAll(t, in, mk(1, 1, "A100", "ACC1", "CT HEAD"), mk(1, 2, "A100", "ACC2", "CT CHEST"))
			stampEarlier()
			storeAll(t, in, mk(1, 3, "A100", "WRONG9", "CT KNEE")) // written last: shown
			del(1, 1)                                              // not the shown instance
			if x.replaces != 0 || x.studyListings != 0 {
				t.Errorf("deleting an instance the study does not show listed the study %d times and rewrote %d entries, want neither", x.studyListings, x.replaces)
			}
			del(1, 3)
			if items := searchItems(t, b.Index, gateway.LevelStudy, "", "AccessionNumber=WRONG9"); len(items) != 0 {
				t.Errorf("the deleted instance's accession number still finds the study")
			}
			shows("shown instance deleted", "AccessionNumber=ACC2", "CT CHEST")
			if x.replaces != 1 {
				t.Errorf("%d entries rewritten, want the latest left", x.replaces)
			}

			// B200's instance, stamped earlier than the instance deleted, is
			// indexed after the listing, before the rewrite: the rewrite is
			// refused, and B200 keeps the study.
			storeAll(t, in, mk(1, 4, "A100", "WRONG8", "CT FOOT"))
			x.beforeReplace = func() { stampEarlier(); storeAll(t, in, mk(1, 5, "B200", "ACC5", "CT HAND")) }
			del(1, 4)
			shows("another patient arrived", "PatientID=B200", "CT HAND")
			if items := searchItems(t, b.Index, gateway.LevelStudy, "", "PatientID=A100"); len(items) != 1 {
				t.Errorf("another patient arrived: PatientID=A100 finds %d studies, want 1", len(items))
			} else if others, flagged := gateway.IdentityConflicts(items[0]); !flagged || len(others) != 1 || others[0].ID != "B200" {
				t.Errorf("another patient arrived: flag %v naming %v, want B200", flagged, others)
			}
			if got := events.restated(); len(got) != 0 {
				t.Errorf("%d identity.restated events, want none: the delete changed no patient's listing", len(got))
			}

			// A study whose instances look alike: deleting the one shown
			// rewrites nothing.
			storeAll(t, in, mk(3, 1, "A100", "ACC3", "MR"), mk(3, 2, "A100", "ACC3", "MR"))
			replaces := x.replaces
			del(3, 2)
			if x.replaces != replaces {
				t.Errorf("deleting the shown one of two look-alike instances rewrote %d entries, want none", x.replaces-replaces)
			}
			shows("look-alike deleted", "AccessionNumber=ACC3", "MR")

			// Two patients, unflagged: stored by an Ingester whose identity
			// check finds no study and whose writes are not checked.
			blind := &gateway.Ingester{Blobs: b.Blobs, Index: blindIndex{b.Index}, Now: now}
			storeAll(t, blind, mk(2, 1, "A100", "", ""), mk(2, 2, "B200", "", ""), mk(2, 3, "B200", "", "WRONG"))
			del(2, 3)
			for _, pid := range []string{"A100", "B200"} {
				items := searchItems(t, b.Index, gateway.LevelStudy, "", "PatientID="+pid+"&StudyInstanceUID="+synth.UID(97, 2))
				if len(items) != 1 {
					t.Errorf("PatientID=%s: %d studies, want the study its instance is in", pid, len(items))
				} else if _, flagged := gateway.IdentityConflicts(items[0]); !flagged {
					t.Errorf("PatientID=%s: the study holding two patients is not flagged", pid)
				}
			}
			if got := events.restated(); len(got) != 1 || got[0].Detail["flagged"] != true {
				t.Errorf("restated events %+v, want one, flagged", got)
			}
		})
	}
}

// blindIndex is an Index whose study entries a search by Study Instance
// UID does not find, and which has no checked write: an Ingester over it
// flags nothing.
type blindIndex struct{ gateway.Index }

func (x blindIndex) Search(ctx context.Context, q *gateway.Query) (*gateway.SearchResult, error) {
	if q.Level == gateway.LevelStudy && q.StudyInstanceUID != "" {
		return &gateway.SearchResult{}, nil
	}
	return x.Index.Search(ctx, q)
}

// arrivingIndex is an Index where an instance arrives in the study each
// time a whole study is listed (restateStudy's listings), after the
// listing is read.
type arrivingIndex struct {
	gateway.Index
	arrive func()
}

func (x *arrivingIndex) ListInstances(ctx context.Context, studyUID, seriesUID string) ([]*gateway.InstanceRecord, error) {
	recs, err := x.Index.ListInstances(ctx, studyUID, seriesUID)
	if seriesUID == "" {
		x.arrive()
	}
	return recs, err
}

// TestIdentityConflictArrivingTogether: two patients' instances arrive in
// one study at the same moment: another patient's instance is indexed
// between the identity check of the one being stored and its index write
// (a concurrent upload, or another replica). The write is refused and the
// instance checked again, so the study ends flagged and found by both
// Patient IDs, and the conflict is audited once; before, both instances
// missed the check (a new study) or the later write dropped the flag the
// earlier one set (a study flagged already). A study that keeps changing
// under the check is checked maxIdentityChecks times, then the instance
// is indexed all the same: the check never refuses an instance. Both
// backend families.
func TestIdentityConflictArrivingTogether(t *testing.T) {
	for _, kind := range []string{backendtest.Embedded, backendtest.Production} {
		t.Run(kind, func(t *testing.T) {
			b := backendtest.Open(t, kind, backendtest.Options{})
			mk := func(i uint64, pid string) synth.Instance { return patientInstance(93, 1, i, pid) }
			// The other upload writes straight to the backend's index.
			other := &gateway.Ingester{Blobs: b.Blobs, Index: b.Index}
			x := &racedIndex{Index: b.Index}
			events := &conflictEvents{}
			in := &gateway.Ingester{Blobs: b.Blobs, Index: x, Auditor: events}
			store := func(inst synth.Instance) {
				t.Helper()
				if _, err := in.Store(t.Context(), inst.Reader(), gateway.StoreOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			found := func(pids ...string) {
				t.Helper()
				for _, pid := range pids {
					items := searchItems(t, b.Index, gateway.LevelStudy, "", "PatientID="+pid)
					if len(items) != 1 {
						t.Errorf("PatientID=%s: %d studies, want the study its instance is in", pid, len(items))
						continue
					}
					if others, flagged := gateway.IdentityConflicts(items[0]); !flagged || len(others) != len(pids)-1 {
						t.Errorf("PatientID=%s: flag %v naming %v, want the other %d", pid, flagged, others, len(pids)-1)
					}
				}
			}

			// A new study: B200's check reads no study, then A100's
			// instance is indexed.
			x.arrive = func() { storeAll(t, other, mk(1, "A100")) }
			store(mk(2, "B200"))
			if x.checkedPuts != 2 {
				t.Errorf("%d checked index writes of B200's instance, want 2 (refused, then written)", x.checkedPuts)
			}
			found("A100", "B200")
			if n := events.count(); n != 1 {
				t.Errorf("%d identity.conflict events, want B200's one", n)
			}

			// A flagged study: A100's second instance reads it as A100's
			// and B200's, then C300's arrives and flags it naming both.
			x.checkedPuts, x.arrive = 0, func() { storeAll(t, other, mk(3, "C300")) }
			store(mk(4, "A100"))
			if x.checkedPuts != 2 {
				t.Errorf("%d checked index writes of A100's instance, want 2", x.checkedPuts)
			}
			found("A100", "B200", "C300")
			if n := events.count(); n != 2 {
				t.Errorf("%d identity.conflict events, want 2: one for each instance that brought a conflict, once however often it was checked", n)
			}

			// A study that changes before every write.
			n := 0
			x.checkedPuts, x.every, x.arrive = 0, true, func() { n++; storeAll(t, other, mk(uint64(10+n), fmt.Sprintf("E%d", n))) }
			store(mk(5, "D400"))
			if x.checkedPuts != 8 {
				t.Errorf("%d checked index writes, want maxIdentityChecks (8), then one unchecked", x.checkedPuts)
			}
			if _, err := b.Index.GetInstance(t.Context(), synth.UID(93, 1, 5, 1)); err != nil {
				t.Errorf("the instance whose study kept changing is not indexed: %v", err)
			}
		})
	}
}

// TestIdentityConflictRestatedBetweenCheckAndWrite: a delete restates a
// flagged study (C300's only instance deleted) between the identity check
// of an arriving instance and its index write. The write is refused and
// the instance checked again, so its flag does not name the deleted
// patient back into the study: C300 no longer finds it.
func TestIdentityConflictRestatedBetweenCheckAndWrite(t *testing.T) {
	for _, kind := range []string{backendtest.Embedded, backendtest.Production} {
		t.Run(kind, func(t *testing.T) {
			b := backendtest.Open(t, kind, backendtest.Options{})
			study := synth.UID(95, 1)
			mk := func(i uint64, pid string) synth.Instance { return patientInstance(95, 1, i, pid) }
			storeAll(t, &gateway.Ingester{Blobs: b.Blobs, Index: b.Index}, mk(1, "A100"), mk(2, "B200"), mk(3, "C300"))
			svc := gateway.NewServices(gateway.ServiceDeps{Blobs: b.Blobs, Index: b.Index})
			admin := gateway.Caller{Principal: gateway.Principal{Name: "pacs-admin"}}
			x := &racedIndex{Index: b.Index, arrive: func() {
				if _, _, err := svc.Delete.Delete(t.Context(), admin, study, synth.UID(95, 1, 3), ""); err != nil {
					t.Fatal(err)
				}
			}}
			storeAll(t, &gateway.Ingester{Blobs: b.Blobs, Index: x}, mk(4, "A100"))
			if x.checkedPuts != 2 {
				t.Errorf("%d checked index writes, want 2 (refused after the restatement, then written)", x.checkedPuts)
			}
			if items := searchItems(t, b.Index, gateway.LevelStudy, "", "PatientID=C300"); len(items) != 0 {
				t.Errorf("PatientID=C300 finds the study its only instance was deleted from")
			}
			for _, pid := range []string{"A100", "B200"} {
				if items := searchItems(t, b.Index, gateway.LevelStudy, "", "PatientID="+pid); len(items) != 1 {
					t.Errorf("PatientID=%s: %d studies, want 1", pid, len(items))
				}
			}
		})
	}
}

// TestIdentityConflictAuditedWhenTheReplyIsLost: the index write of an
// instance that brings a conflict lands, but its reply is lost (Redis
// restarted): the instance is found indexed, the store acknowledged, and
// the conflict audited all the same.
func TestIdentityConflictAuditedWhenTheReplyIsLost(t *testing.T) {
	for _, kind := range []string{backendtest.Embedded, backendtest.Production} {
		t.Run(kind, func(t *testing.T) {
			b := backendtest.Open(t, kind, backendtest.Options{})
			mk := func(i uint64, pid string) synth.Instance { return patientInstance(96, 1, i, pid) }
			storeAll(t, &gateway.Ingester{Blobs: b.Blobs, Index: b.Index}, mk(1, "A100"))
			events := &conflictEvents{}
			storeAll(t, &gateway.Ingester{Blobs: b.Blobs, Index: lostReplyIndex{b.Index}, Auditor: events}, mk(2, "B200"))
			if n := events.count(); n != 1 {
				t.Errorf("%d identity.conflict events, want 1", n)
			}
			if items := searchItems(t, b.Index, gateway.LevelStudy, "", "PatientID=A100"); len(items) != 1 {
				t.Errorf("PatientID=A100: %d studies, want 1", len(items))
			}
		})
	}
}

// lostReplyIndex is an Index whose checked writes land but answer an error.
type lostReplyIndex struct{ gateway.Index }

func (x lostReplyIndex) PutInstanceChecked(ctx context.Context, rec *gateway.InstanceRecord, studyIdentities string) (*gateway.InstanceRecord, bool, error) {
	if _, _, err := x.Index.(gateway.IdentityCheckedIndex).PutInstanceChecked(ctx, rec, studyIdentities); err != nil {
		return nil, false, err
	}
	return nil, false, fmt.Errorf("reply lost: %w", gateway.ErrUnavailable)
}

func (x lostReplyIndex) ReplaceInstanceChecked(ctx context.Context, rec *gateway.InstanceRecord, studyIdentities string) error {
	return x.Index.(gateway.IdentityCheckedIndex).ReplaceInstanceChecked(ctx, rec, studyIdentities)
}

// TestIdentityConflictConcurrentUploads: instances of two patients stored
// into new studies by concurrent uploads, through one Ingester: however
// their checks and writes interleave, every study ends found by both
// Patient IDs and flagged.
func TestIdentityConflictConcurrentUploads(t *testing.T) {
	for _, kind := range []string{backendtest.Embedded, backendtest.Production} {
		t.Run(kind, func(t *testing.T) {
			b := backendtest.Open(t, kind, backendtest.Options{})
			in := &gateway.Ingester{Blobs: b.Blobs, Index: b.Index}
			const studies, perStudy = 4, 8
			var wg sync.WaitGroup
			for st := range uint64(studies) {
				for i := range uint64(perStudy) {
					pid := []string{"A100", "B200"}[i%2]
					inst := patientInstance(94, st, i, pid)
					wg.Go(func() {
						if _, err := in.Store(t.Context(), inst.Reader(), gateway.StoreOptions{}); err != nil {
							t.Error(err)
						}
					})
				}
			}
			wg.Wait()
			for _, pid := range []string{"A100", "B200"} {
				items := searchItems(t, b.Index, gateway.LevelStudy, "", "PatientID="+pid)
				if len(items) != studies {
					t.Errorf("PatientID=%s: %d studies, want all %d", pid, len(items), studies)
				}
				for _, d := range items {
					if _, flagged := gateway.IdentityConflicts(d); !flagged {
						t.Errorf("PatientID=%s: study %s not flagged", pid, d.String(dicomcodec.TagStudyInstanceUID))
					}
				}
			}
		})
	}
}

// TestStudyIdentitySet: the set a conditional index write compares is that
// of the patients an entry lists, whatever their order, repetition or the
// entry's other attributes; it tells apart a study without a Patient ID
// from no study, and an ID from an ID and issuer that read the same run
// together.
func TestStudyIdentitySet(t *testing.T) {
	entry := func(id, issuer, description string, others ...gateway.PatientIdentity) dicomcodec.Dataset {
		d := dicomcodec.Dataset{"00081030": {VR: "LO", Value: []any{description}}}
		if id != "" {
			d[dicomcodec.TagPatientID] = dicomcodec.Attribute{VR: "LO", Value: []any{id}}
		}
		if issuer != "" {
			d[gateway.TagIssuerOfPatientID] = dicomcodec.Attribute{VR: "LO", Value: []any{issuer}}
		}
		if len(others) > 0 {
			v := []any{gateway.IdentityConflictValue}
			for _, o := range others {
				v = append(v, o.ID, o.Issuer)
			}
			d[gateway.TagGatewayPrivateCreator] = dicomcodec.Attribute{VR: "LO", Value: []any{gateway.GatewayPrivateCreator}}
			d[gateway.TagIdentityConflict] = dicomcodec.Attribute{VR: "LO", Value: v}
		}
		return d
	}
	a, b := gateway.PatientIdentity{ID: "A100", Issuer: "SURREY"}, gateway.PatientIdentity{ID: "B200", Issuer: "KENT"}
	set := gateway.StudyIdentitySet
	for _, same := range [][2]dicomcodec.Dataset{
		{entry("A100", "SURREY", "head"), entry("A100", "SURREY", "chest")},
		{entry("A100", "SURREY", "", b), entry("B200", "KENT", "", a)},
		{entry("A100", "SURREY", "", b, a, b), entry("A100", "SURREY", "", b)},
	} {
		if set(same[0]) != set(same[1]) {
			t.Errorf("%q != %q for entries listing the same patients", set(same[0]), set(same[1]))
		}
	}
	for _, differ := range [][2]dicomcodec.Dataset{
		{nil, entry("", "", "")},
		{entry("A100", "SURREY", ""), entry("A100", "", "")},
		{entry("A100", "SURREY", ""), entry("A100", "SURREY", "", b)},
		{entry("a", "b", ""), entry("ab", "", "")},
	} {
		if set(differ[0]) == set(differ[1]) {
			t.Errorf("%q for two entries listing different patients", set(differ[0]))
		}
	}
	if set(nil) != "" {
		t.Errorf("no entry: %q, want \"\"", set(nil))
	}
}

// racedIndex is an Index where another upload's instance arrives (arrive)
// just before its next checked write, or before every one (every); and
// before its next checked replace (beforeReplace), which it counts, as it
// counts listings of whole studies.
type racedIndex struct {
	gateway.Index
	arrive        func()
	every         bool
	checkedPuts   int
	beforeReplace func()
	replaces      int
	studyListings int
}

func (x *racedIndex) ListInstances(ctx context.Context, studyUID, seriesUID string) ([]*gateway.InstanceRecord, error) {
	if seriesUID == "" {
		x.studyListings++
	}
	return x.Index.ListInstances(ctx, studyUID, seriesUID)
}

func (x *racedIndex) PutInstanceChecked(ctx context.Context, rec *gateway.InstanceRecord, studyIdentities string) (*gateway.InstanceRecord, bool, error) {
	x.checkedPuts++
	if arrive := x.arrive; arrive != nil {
		if !x.every {
			x.arrive = nil
		}
		arrive()
	}
	return x.Index.(gateway.IdentityCheckedIndex).PutInstanceChecked(ctx, rec, studyIdentities)
}

func (x *racedIndex) ReplaceInstanceChecked(ctx context.Context, rec *gateway.InstanceRecord, studyIdentities string) error {
	x.replaces++
	if before := x.beforeReplace; before != nil {
		x.beforeReplace = nil
		before()
	}
	return x.Index.(gateway.IdentityCheckedIndex).ReplaceInstanceChecked(ctx, rec, studyIdentities)
}

// TestIdentityConflictNamesLearned: a study flagged by an earlier version
// (A's instance, then B's flagged naming A, without names) gets the names
// of the identities its flag already named when the next instance
// arrives, from the study's instances: a search by A's name then finds
// the study as A's.
func TestIdentityConflictNamesLearned(t *testing.T) {
	b := backendtest.Open(t, backendtest.Embedded, backendtest.Options{})
	in := &gateway.Ingester{Blobs: b.Blobs, Index: b.Index}
	study := synth.UID(90, 1)
	pn := func(name string) dicomcodec.Attribute {
		return dicomcodec.Attribute{VR: "PN", Value: []any{dicomcodec.PersonName{Alphabetic: name}}}
	}
	a := storagetest.Record(study, synth.UID(90, 1, 1), synth.UID(90, 1, 1, 1), map[string]any{dicomcodec.TagPatientID: "A100"})
	a.Metadata[dicomcodec.TagPatientName] = pn("Alpha^Ann")
	old := storagetest.Record(study, synth.UID(90, 1, 2), synth.UID(90, 1, 2, 1), map[string]any{dicomcodec.TagPatientID: "B200"})
	old.Metadata[dicomcodec.TagPatientName] = pn("Beta^Bob")
	for _, r := range []*gateway.InstanceRecord{a, storagetest.Flagged(old, gateway.PatientIdentity{ID: "A100"})} {
		if _, _, err := b.Index.PutInstance(t.Context(), r); err != nil {
			t.Fatal(err)
		}
	}
	if items := searchItems(t, b.Index, gateway.LevelStudy, "", "PatientName=Alpha*"); len(items) != 0 {
		t.Fatalf("before: PatientName=Alpha* finds %d studies: the earlier flag was meant to carry no names", len(items))
	}
	inst := synth.Instance{PatientName: "Gamma^Cy", PatientID: "C300", StudyInstanceUID: study,
		SeriesInstanceUID: synth.UID(90, 1, 3), SOPInstanceUID: synth.UID(90, 1, 3, 1), Rows: 4, Columns: 4}
	storeAll(t, in, inst)
	for name, pid := range map[string]string{"Alpha*": "A100", "Beta*": "B200", "Gamma*": "C300"} {
		if items := searchItems(t, b.Index, gateway.LevelStudy, "", "PatientName="+name); len(items) != 1 || items[0].String(dicomcodec.TagPatientID) != pid {
			t.Errorf("PatientName=%s: %d studies, want 1 shown as %s", name, len(items), pid)
		}
	}
}

// restatedEvents keeps the identity.restated events a service records.
type restatedEvents struct {
	mu  sync.Mutex
	evs []*gateway.AuditEvent
}

func (a *restatedEvents) Record(_ context.Context, ev *gateway.AuditEvent) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ev.Action == gateway.ActionIdentityRestated {
		a.evs = append(a.evs, ev)
	}
	return nil
}

func (a *restatedEvents) restated() []*gateway.AuditEvent {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.evs)
}

// searchItems runs a QIDO-RS query (raw query string) on x.
func searchItems(t *testing.T, x gateway.Index, level gateway.QueryLevel, studyUID, raw string) []dicomcodec.Dataset {
	t.Helper()
	params, err := url.ParseQuery(raw)
	if err != nil {
		t.Fatal(err)
	}
	q, err := gateway.ParseQuery(level, studyUID, "", params, gateway.QueryLimits{Default: 100, Max: 100})
	if err != nil {
		t.Fatal(err)
	}
	res, err := x.Search(t.Context(), q)
	if err != nil {
		t.Fatal(err)
	}
	return res.Items
}

// conflictEvents counts the identity.conflict events an Ingester records.
type conflictEvents struct {
	mu sync.Mutex
	n  int
}

func (a *conflictEvents) Record(_ context.Context, ev *gateway.AuditEvent) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ev.Action == gateway.ActionIdentityConflict {
		a.n++
	}
	return nil
}

func (a *conflictEvents) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n
}

// patientInstance is a 4×4 instance of patient pid (Doe^pid), the only
// one of series i of the study synth.UID(root, study).
func patientInstance(root, study, i uint64, pid string) synth.Instance {
	return synth.Instance{PatientName: "Doe^" + pid, PatientID: pid, StudyInstanceUID: synth.UID(root, study),
		SeriesInstanceUID: synth.UID(root, study, i), SOPInstanceUID: synth.UID(root, study, i, 1), Rows: 4, Columns: 4, StudyDate: "20240101"}
}

// storeAll stores insts through in, in order, failing the test at the
// first that is not stored.
func storeAll(t testing.TB, in *gateway.Ingester, insts ...synth.Instance) {
	t.Helper()
	for _, inst := range insts {
		if _, err := in.Store(t.Context(), inst.Reader(), gateway.StoreOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}
