// AttachmentTable: this node's attachments, by id — the mapper side's one
// record of what is attached, by which process, through which apid. The
// client-request handler (local/) adds and removes entries; mapper-side
// invalidation finds a segment's attachments here, the lease keeper a
// home's; tetherctl lists them — direct attachments too (same-node,
// through tether.ko: the exporter's own pages, no cache; local/ keeps
// their state and notes them here only so that they are listed).
//
// Thread contract: every method may be called from any thread — local
// client threads (attach, detach, a client's exit), the threads that
// deliver invalidation notices (Of), tetherctl's gRPC threads (Summaries),
// Tetherd::Stop (TakeAll). mu_ guards the id counter and the entries;
// nothing is called under it, and no attachment's lock is taken under it
// (attachments are handed out as shared_ptrs, used after the lock is
// dropped; Summaries takes each attachment's `mu` after). Insert writes
// the attachment's id before the attachment is shared (attachment.h).
#ifndef TETHER_DAEMON_MAPPER_ATTACHMENT_TABLE_H_
#define TETHER_DAEMON_MAPPER_ATTACHMENT_TABLE_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "daemon/mapper/attachment.h"

namespace tether {

struct AttachmentSummary {
  uint64_t id = 0, segid = 0, offset = 0, size = 0;
  pid_t pid = 0;
  bool writable = false;
  uint64_t resident_bytes = 0, dirty_bytes = 0, faults = 0;
  std::string state;
  // "copy" (a cache this daemon serves) or "direct" (tether.ko maps the
  // exporter's pages: nothing resident, dirty or faulted here).
  std::string kind = "copy";
};

class AttachmentTable {
 public:
  // Ids are (incarnation << 32) | counter: an id from before a restart of
  // this daemon never names a new attachment.
  explicit AttachmentTable(uint32_t incarnation) : incarnation_(incarnation) {}

  // Adds `att` (sets its id) for the local connection `owner`, through
  // apid `apid`. Returns the id.
  uint64_t Insert(std::shared_ptr<Attachment> att, uint64_t owner, uint64_t apid);
  // The attachment `id` if it belongs to process `pid`, else null.
  std::shared_ptr<Attachment> Find(uint64_t id, pid_t pid);
  // Removes and returns `id` (null if absent). A taken attachment is being
  // detached: no client request finds it any more, but Of and FromHome
  // still do until Detached(id) — its detach writes back and waits for
  // the windows over it, which only invalidation notices end (and a
  // range_begin meanwhile must still drop its copies).
  std::shared_ptr<Attachment> Take(uint64_t id);
  // Removes and returns every attachment of the local connection `owner`
  // (being detached, as Take).
  std::vector<std::shared_ptr<Attachment>> TakeOwnedBy(uint64_t owner);
  // Removes and returns all (daemon shutdown; being detached, as Take).
  std::vector<std::shared_ptr<Attachment>> TakeAll();
  // The detach of a taken attachment finished: forget it.
  void Detached(uint64_t id);
  // Attachments of a segment (for invalidation notices), those being
  // detached included.
  std::vector<std::shared_ptr<Attachment>> Of(uint64_t segid);
  // Attachments whose segment's home is `home`, and the homes attachments
  // come from (the lease keeper: lease_keeper.h).
  std::vector<std::shared_ptr<Attachment>> FromHome(uint32_t home);
  std::vector<uint32_t> Homes();
  // Whether any attachment was made through `apid`.
  bool UsesApid(uint64_t apid);
  // Every attachment, direct ones included, for tetherctl.
  std::vector<AttachmentSummary> Summaries();
  // A direct attachment made (`s.id` set; kind "direct") / gone: listed
  // only (local/ serves it).
  void NoteDirect(const AttachmentSummary& s);
  void ForgetDirect(uint64_t id);

 private:
  struct Entry {
    std::shared_ptr<Attachment> att;
    uint64_t owner = 0;
    uint64_t apid = 0;
  };
  const uint32_t incarnation_;  // set at construction, never changed
  absl::Mutex mu_;
  uint64_t next_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint64_t, Entry> entries_ ABSL_GUARDED_BY(mu_);
  // Taken, being detached (see Take).
  absl::flat_hash_map<uint64_t, std::shared_ptr<Attachment>> detaching_ ABSL_GUARDED_BY(mu_);
  // Direct attachments, for Summaries only.
  absl::flat_hash_map<uint64_t, AttachmentSummary> direct_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tether

#endif  // TETHER_DAEMON_MAPPER_ATTACHMENT_TABLE_H_
