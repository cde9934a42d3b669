package recordcodec

// recordDictionary is the preset dictionary of the deflated record form
// (recordVersionDeflate): the uncompressed form of a typical lean CT record
// (gateway.IndexRecord) of a public test image (NEMA WG04 CT1) with its
// UIDs, digest and patient name replaced by generic values, so that the
// field names, tags, VRs and common values every record repeats cost a few
// bits each. Stored records depend on these exact bytes: never change them;
// a better dictionary needs a new record version.
const recordDictionary = "\xd6\x03{\"study_uid\":\"1.2.840.113619.2.55.3.604688119.9\",\"series_uid\":\"1.2.840.113619.2.55.3." +
	"604688119.9\",\"sop_instance_uid\":\"1.2.840.113619.2.55.3.604688119.9\",\"sop_class_uid\":\"1.2.840" +
	".10008.5.1.4.1.1.2\",\"transfer_syntax_uid\":\"1.2.840.10008.1.2\",\"size\":530626,\"sha256\":\"\",\"" +
	"number_of_frames\":1,\"pixel_data\":{\"value_offset\":6204,\"value_length\":524288,\"encapsulated\":" +
	"false,\"frames\":[[{\"offset\":6204,\"length\":524288}]]},\"stored_at\":\"2026-12-05T01:51:35.464449" +
	"766Z\",\"metadata\":null}\x01.,\x0800080005\x02CSv\x01s\x0aISO_IR 192\x0800080008\x02CSv\x03s\x08ORI" +
	"GINALs\x07PRIMARYs\x05AXIAL\x0800080016\x02UIv\x01s\x191.2.840.10008.5.1.4.1.1.2\x0800080018\x02UIv\x01" +
	"s!1.2.840.113619.2.55.3.604688119.9\x0800080020\x02DAv\x01s\x0820040826\x0800080021\x02DAv\x01s\x081" +
	"9970430\x0800080022\x02DAv\x01s\x0819970430\x0800080023\x02DAv\x01s\x0819970430\x0800080030\x02TMv\x01" +
	"s\x06185059\x0800080031\x02TMv\x01s\x06112749\x0800080032\x02TMv\x01s\x06112936\x0800080033\x02TMv\x01" +
	"s\x06113008\x0800080050\x02SHv\x00\x0800080060\x02CSv\x01s\x02CT\x0800080070\x02LOv\x01s\x12GE MEDIC" +
	"AL SYSTEMS\x0800080080\x02LOv\x01s\x12JFK IMAGING CENTER\x0800080090\x02PNv\x00\x0800080201\x02SHv\x01" +
	"s\x05-0400\x0800081010\x02SHv\x01s\x08CT01_OC0\x0800081030\x02LOv\x01s\x03e+1\x0800100010\x02PNv\x01" +
	"p\x01^\x00\x00\x0800100020\x02LOv\x01s\x041CT1\x0800100030\x02DAv\x00\x0800100040\x02CSv\x01s\x01O\x08" +
	"00101010\x02ASv\x01s\x04000Y\x0800101030\x02DSv\x01f\x00\x00\x00\x00\x00\x00\x00\x00\x080020000D\x02" +
	"UIv\x01s!1.2.840.113619.2.55.3.604688119.9\x080020000E\x02UIv\x01s!1.2.840.113619.2.55.3.604688119.9" +
	"\x0800200010\x02SHv\x01s\x041CT1\x0800200011\x02ISv\x01i\x02\x0800200012\x02ISv\x01i\x04\x0800200013" +
	"\x02ISv\x01i\x02\x0800200060\x02CSv\x00\x0800280002\x02USv\x01i\x02\x0800280004\x02CSv\x01s\x0bMONOC" +
	"HROME2\x0800280010\x02USv\x01i\x80\x08\x0800280011\x02USv\x01i\x80\x08\x0800280030\x02DSv\x02f\x867k" +
	"\xf0\xbe*\xe5?f\x867k\xf0\xbe*\xe5?\x0800280100\x02USv\x01i \x0800280101\x02USv\x01i \x0800280102\x02" +
	"USv\x01i\x1e\x0800280103\x02USv\x01i\x02\x0800280120\x02SSv\x01i\x9f\x1f\x0800281052\x02DSv\x01f\x00" +
	"\x00\x00\x00\x00\x00\x90\xc0\x0800281053\x02DSv\x01f\x00\x00\x00\x00\x00\x00\xf0?\x087FE00010\x02OWj" +
	"-{\"vr\":\"OW\",\"BulkDataURI\":\"bulkdata/7FE00010\"}"
