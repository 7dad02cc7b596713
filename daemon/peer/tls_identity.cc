#include "daemon/peer/tls_identity.h"

#include <dirent.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_certificate_verifier.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "daemon/common/errors.h"
#include "daemon/common/log.h"
#include "daemon/common/status_macros.h"

namespace tether {
namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct StoreFree {
  void operator()(X509_STORE* s) const { X509_STORE_free(s); }
};
struct StoreCtxFree {
  void operator()(X509_STORE_CTX* c) const { X509_STORE_CTX_free(c); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;

std::unique_ptr<BIO, BioFree> MemBio(const std::string& s) {
  return std::unique_ptr<BIO, BioFree>(BIO_new_mem_buf(s.data(), static_cast<int>(s.size())));
}

// Every certificate in a PEM text, in order.
std::vector<X509Ptr> ReadCerts(const std::string& pem) {
  std::vector<X509Ptr> out;
  auto bio = MemBio(pem);
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) out.emplace_back(x);
  ERR_clear_error();  // the read that ends the loop leaves "no start line"
  return out;
}

absl::Time AsTime(const ASN1_TIME* t) {
  struct tm tm = {};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return absl::InfinitePast();
  return absl::FromTimeT(timegm(&tm));
}

std::string Hex(const unsigned char* p, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; i++) absl::StrAppendFormat(&out, "%02X", p[i]);
  return out;
}

std::string DnsNames(X509* cert) {
  std::vector<std::string> names;
  auto* sans =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans); i++) {
    const GENERAL_NAME* g = sk_GENERAL_NAME_value(sans, i);
    if (g->type != GEN_DNS) continue;
    const ASN1_IA5STRING* s = g->d.dNSName;
    names.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                       ASN1_STRING_length(s));
  }
  GENERAL_NAMES_free(sans);
  return names.empty() ? "no DNS names" : absl::StrJoin(names, ", ");
}

absl::Status ReadWhole(const std::string& what, const std::string& path, std::string* out) {
  std::ifstream f(path);
  if (!f)
    return ErrnoStatus(errno ? errno : EIO, absl::StrCat("cannot read the ", what, " ", path));
  std::stringstream ss;
  ss << f.rdbuf();
  *out = ss.str();
  return absl::OkStatus();
}

absl::Status WriteFile(const std::string& path, const std::string& data) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoStatus(errno, "create " + path);
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      close(fd);
      return ErrnoStatus(err, "write " + path);
    }
    done += n;
  }
  if (close(fd) != 0) return ErrnoStatus(errno, "write " + path);
  return absl::OkStatus();
}

constexpr absl::string_view kStagedPrefix = "tls-staged.";

// mkdtemp's names for Load's template: the prefix and six letters or digits.
bool IsStagingName(absl::string_view name) {
  if (name.size() != kStagedPrefix.size() + 6 || !absl::StartsWith(name, kStagedPrefix))
    return false;
  for (char c : name.substr(kStagedPrefix.size()))
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c))) return false;
  return true;
}

// Removes the staging directories under `dir` that a tetherd which never
// ran its destructor (SIGKILL, a crash, the OOM killer) left behind. Only
// ours: named as Load names them, a directory (not a link to one) owned by
// this euid, and not locked — every TlsIdentity holds an flock on its own
// directory while it lives (several tetherds may share `dir`: the test
// clusters' a1.sock, a2.sock), and the kernel drops the lock however its
// holder dies. A directory whose maker has not locked it yet is taken
// too: that maker sees it gone and makes another (Load).
void RemoveStaleStaging(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (!d) return;  // Load's mkdtemp reports what is wrong with dir
  std::vector<std::string> stale;
  while (dirent* e = readdir(d)) {
    if (!IsStagingName(e->d_name)) continue;
    std::string path = absl::StrCat(dir, "/", e->d_name);
    int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) continue;
    struct stat st {};
    if (fstat(fd, &st) == 0 && st.st_uid == geteuid() && flock(fd, LOCK_EX | LOCK_NB) == 0) {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);  // under the lock: no Load takes it meanwhile
      if (ec)
        TLOG_WARN("TLS: cannot remove %s, left by a tetherd that did not exit: %s", path,
                  ec.message());
      else
        TLOG_INFO("TLS: removed %s, left by a tetherd that did not exit", path);
    }
    close(fd);
  }
  closedir(d);
}

// mkdtemp under `dir`, locked (see RemoveStaleStaging): the directory's
// path, and its locked fd in *lock_fd.
absl::StatusOr<std::string> MakeStagingDir(const std::string& dir, int* lock_fd) {
  for (int attempt = 0; attempt < 5; ++attempt) {
    std::string path = absl::StrCat(dir, "/", kStagedPrefix, "XXXXXX");
    if (!mkdtemp(path.data()))
      return ErrnoStatus(errno, "make a private directory for the TLS files under " + dir);
    int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) continue;  // another tetherd's start took it for stale: make another
    struct stat held {
    }, now{};
    if (flock(fd, LOCK_EX | LOCK_NB) == 0 && fstat(fd, &held) == 0 &&
        stat(path.c_str(), &now) == 0 && held.st_ino == now.st_ino && held.st_dev == now.st_dev) {
      *lock_fd = fd;
      return path;
    }
    close(fd);  // taken for stale meanwhile (locked by its remover, or gone)
  }
  return ErrnoStatus(EAGAIN, "make a private directory for the TLS files under " + dir +
                                 ": other tetherds starting there removed it 5 times");
}

// The names that identify a tether node in a certificate's DNS SANs.
bool IsNodeName(absl::string_view name) {
  uint32_t id = 0;
  return absl::ConsumePrefix(&name, kNodeCertNamePrefix) && absl::SimpleAtoi(name, &id) &&
         id >= 1 && id <= 0x7fff && name == std::to_string(id);
}

// Runs after the chain checked out against the CA. The client side's
// target name is the node the channel was made for (SetTargetNode).
class NodeNameVerifier : public grpc::experimental::ExternalCertificateVerifier {
 public:
  explicit NodeNameVerifier(bool client_side) : client_side_(client_side) {}

  bool Verify(grpc::experimental::TlsCustomVerificationCheckRequest* req,
              std::function<void(grpc::Status)>, grpc::Status* sync_status) override {
    std::vector<std::string> names;
    for (const auto& n : req->dns_names()) names.emplace_back(n.data(), n.size());
    std::string shown = names.empty() ? "no DNS names" : absl::StrJoin(names, ", ");
    if (client_side_) {
      std::string want(req->target_name().data(), req->target_name().size());
      for (const auto& n : names) {
        if (n == want) {
          *sync_status = grpc::Status::OK;
          return true;
        }
      }
      std::string msg =
          absl::StrCat("the peer reached as ", want, " presented a certificate for ", shown,
                       ", not ", want, ": connection refused (another node's certificate?)");
      if (ShouldLogRefusal(msg)) TLOG_WARN("TLS: %s", msg);
      *sync_status = grpc::Status(grpc::StatusCode::UNAUTHENTICATED, msg);
      return true;
    }
    for (const auto& n : names) {
      if (IsNodeName(n)) {
        *sync_status = grpc::Status::OK;
        return true;
      }
    }
    std::string msg =
        absl::StrCat("refused a connection whose certificate names no tether node (", shown, ")");
    if (ShouldLogRefusal(msg)) TLOG_WARN("TLS: %s", msg);
    *sync_status = grpc::Status(grpc::StatusCode::UNAUTHENTICATED, msg);
    return true;
  }

  void Cancel(grpc::experimental::TlsCustomVerificationCheckRequest*) override {}

 private:
  const bool client_side_;
};

std::string Date(absl::Time t) {
  return absl::FormatTime("%Y-%m-%d %H:%M UTC", t, absl::UTCTimeZone());
}

}  // namespace

// A refused handshake is retried by gRPC every second while the channel is
// wanted, and a refused node renews every third of a lease: log each
// distinct refusal at most once a minute.
bool ShouldLogRefusal(const std::string& key) {
  static absl::Mutex mu(absl::kConstInit);
  static auto* last = new absl::flat_hash_map<std::string, absl::Time>();
  absl::MutexLock lock(&mu);
  absl::Time now = absl::Now();
  auto [it, fresh] = last->try_emplace(key, now);
  if (!fresh && now - it->second < absl::Minutes(1)) return false;
  it->second = now;
  return true;
}

absl::StatusOr<CertInfo> CheckTlsMaterial(const std::string& ca_pem, const std::string& cert_pem,
                                          const std::string& key_pem, uint32_t node,
                                          absl::Time now) {
  auto bad = [](const std::string& msg) { return absl::InvalidArgumentError(msg); };
  std::vector<X509Ptr> cas = ReadCerts(ca_pem);
  if (cas.empty()) return bad("the CA file holds no PEM certificate");
  std::vector<X509Ptr> chain = ReadCerts(cert_pem);
  if (chain.empty()) return bad("the certificate file holds no PEM certificate");
  X509* cert = chain[0].get();
  auto kbio = MemBio(key_pem);
  std::unique_ptr<EVP_PKEY, KeyFree> key(
      PEM_read_bio_PrivateKey(kbio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (!key) return bad("the key file holds no PEM private key (or it is encrypted)");
  if (X509_check_private_key(cert, key.get()) != 1) {
    ERR_clear_error();
    return bad("the key file's key is not the certificate's");
  }
  CertInfo info;
  info.not_after = AsTime(X509_get0_notAfter(cert));
  info.ca_not_after = absl::InfiniteFuture();
  std::unique_ptr<X509_STORE, StoreFree> store(X509_STORE_new());
  for (auto& ca : cas) {
    X509_STORE_add_cert(store.get(), ca.get());
    info.ca_not_after = std::min(info.ca_not_after, AsTime(X509_get0_notAfter(ca.get())));
  }
  STACK_OF(X509)* untrusted = sk_X509_new_null();
  for (size_t i = 1; i < chain.size(); i++) sk_X509_push(untrusted, chain[i].get());
  std::unique_ptr<X509_STORE_CTX, StoreCtxFree> ctx(X509_STORE_CTX_new());
  X509_STORE_CTX_init(ctx.get(), store.get(), cert, untrusted);
  X509_STORE_CTX_set_time(ctx.get(), 0, absl::ToTimeT(now));
  int ok = X509_verify_cert(ctx.get());
  int err = X509_STORE_CTX_get_error(ctx.get());
  sk_X509_free(untrusted);
  ERR_clear_error();
  if (ok != 1)
    return bad(absl::StrCat("the certificate does not check out against the CA file: ",
                            X509_verify_cert_error_string(err), " (certificate valid until ",
                            Date(info.not_after), ")"));
  std::string want = NodeCertName(node);
  if (X509_check_host(cert, want.data(), want.size(),
                      X509_CHECK_FLAG_NO_WILDCARDS | X509_CHECK_FLAG_NEVER_CHECK_SUBJECT,
                      nullptr) != 1) {
    ERR_clear_error();
    return bad(absl::StrCat("the certificate names ", DnsNames(cert), ", not this node (", want,
                            "): deploy/make-certs node CA_DIR OUT_DIR ", node, " makes one"));
  }
  const ASN1_INTEGER* serial = X509_get0_serialNumber(cert);
  std::unique_ptr<BIGNUM, decltype(&BN_free)> bn(ASN1_INTEGER_to_BN(serial, nullptr), BN_free);
  if (bn) {
    char* hex = BN_bn2hex(bn.get());
    info.serial = hex;
    OPENSSL_free(hex);
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (X509_digest(cert, EVP_sha256(), md, &n) == 1) info.sha256 = Hex(md, n);
  return info;
}

TlsIdentity::TlsIdentity(TlsConfig config, uint32_t node, std::string dir, int lock_fd)
    : config_(std::move(config)), node_(node), dir_(std::move(dir)), lock_fd_(lock_fd) {}

TlsIdentity::~TlsIdentity() {
  provider_.reset();  // its thread stops reading the files first
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
  close(lock_fd_);  // after: no other start takes the directory for stale meanwhile
}

absl::StatusOr<std::unique_ptr<TlsIdentity>> TlsIdentity::Load(const TlsConfig& config,
                                                               uint32_t node,
                                                               const std::string& runtime_dir) {
  std::string dir = runtime_dir.empty() ? std::string(".") : runtime_dir;
  RemoveStaleStaging(dir);
  int lock_fd = -1;
  ASSIGN_OR_RETURN(std::string staged, MakeStagingDir(dir, &lock_fd));
  std::unique_ptr<TlsIdentity> id(new TlsIdentity(config, node, staged, lock_fd));
  std::string ca, cert, key;
  auto info = id->ReadAndCheck(&ca, &cert, &key);
  if (!info.ok()) return info.status();
  {
    absl::MutexLock lock(&id->mu_);
    RETURN_IF_ERROR(id->Stage(ca, cert, key));
    id->info_ = *info;
  }
  std::string cur = id->dir_ + "/current/";
  id->provider_ = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      cur + "key.pem", cur + "cert.pem", cur + "ca.pem", kRefreshSeconds);
  id->server_verifier_ =
      grpc::experimental::ExternalCertificateVerifier::Create<NodeNameVerifier>(false);
  id->client_verifier_ =
      grpc::experimental::ExternalCertificateVerifier::Create<NodeNameVerifier>(true);
  TLOG_INFO("TLS: certificate %s (serial %s, sha256 %s), valid until %s; CA valid until %s",
            config.cert_path, info->serial, info->sha256, Date(info->not_after),
            Date(info->ca_not_after));
  id->WarnIfExpiring();
  return id;
}

absl::StatusOr<CertInfo> TlsIdentity::ReadAndCheck(std::string* ca, std::string* cert,
                                                   std::string* key) const {
  RETURN_IF_ERROR(ReadWhole("CA file (--tls_ca)", config_.ca_path, ca));
  RETURN_IF_ERROR(ReadWhole("certificate (--tls_cert)", config_.cert_path, cert));
  RETURN_IF_ERROR(ReadWhole("key (--tls_key)", config_.key_path, key));
  auto info = CheckTlsMaterial(*ca, *cert, *key, node_, absl::Now());
  if (!info.ok())
    return absl::InvalidArgumentError(
        absl::StrCat(info.status().message(), " (--tls_cert ", config_.cert_path, ", --tls_key ",
                     config_.key_path, ", --tls_ca ", config_.ca_path, ")"));
  return info;
}

// dir_/current -> gen-N: the provider reads current/{key,cert,ca}.pem; one
// rename swaps all three. The generation before stays until the next
// reload, for a read that resolved the link just before the swap.
absl::Status TlsIdentity::Stage(const std::string& ca, const std::string& cert,
                                const std::string& key) {
  int gen = ++generation_;
  std::string g = absl::StrCat(dir_, "/gen-", gen);
  if (mkdir(g.c_str(), 0700) != 0 && errno != EEXIST) return ErrnoStatus(errno, "mkdir " + g);
  RETURN_IF_ERROR(WriteFile(g + "/ca.pem", ca));
  RETURN_IF_ERROR(WriteFile(g + "/cert.pem", cert));
  RETURN_IF_ERROR(WriteFile(g + "/key.pem", key));
  std::string link = absl::StrCat(dir_, "/current.", gen);
  unlink(link.c_str());
  if (symlink(absl::StrCat("gen-", gen).c_str(), link.c_str()) != 0)
    return ErrnoStatus(errno, "symlink " + link);
  if (rename(link.c_str(), (dir_ + "/current").c_str()) != 0)
    return ErrnoStatus(errno, "rename " + link);
  std::error_code ec;
  if (gen > 2) std::filesystem::remove_all(absl::StrCat(dir_, "/gen-", gen - 2), ec);
  return absl::OkStatus();
}

absl::Status TlsIdentity::Reload() {
  std::string ca, cert, key;
  auto info = ReadAndCheck(&ca, &cert, &key);
  {
    absl::MutexLock lock(&mu_);
    if (!info.ok()) {
      TLOG_WARN("TLS: reload refused, still using certificate serial %s (valid until %s): %s",
                info_.serial, Date(info_.not_after), info.status().message());
      return info.status();
    }
    absl::Status st = Stage(ca, cert, key);
    if (!st.ok()) {
      TLOG_WARN("TLS: reload failed, still using certificate serial %s: %s", info_.serial,
                st.message());
      return st;
    }
    info_ = *info;
  }
  TLOG_INFO(
      "TLS: reloaded: certificate serial %s (sha256 %s), valid until %s; CA valid until %s; new "
      "connections present it within %d s",
      info->serial, info->sha256, Date(info->not_after), Date(info->ca_not_after),
      kRefreshSeconds + 1);
  WarnIfExpiring();
  return absl::OkStatus();
}

CertInfo TlsIdentity::Info() const {
  absl::MutexLock lock(&mu_);
  return info_;
}

void TlsIdentity::WarnIfExpiring() const {
  if (config_.expiry_warn_days <= 0) return;
  CertInfo info = Info();
  absl::Time now = absl::Now();
  absl::Duration window = absl::Hours(24) * config_.expiry_warn_days;
  auto warn = [&](const char* what, absl::Time t) {
    if (t - now > window) return;
    if (t <= now) {
      TLOG_WARN("TLS: %s expired %s: peers refuse it; make a new one and reload (docs/security.md)",
                what, Date(t));
      return;
    }
    TLOG_WARN(
        "TLS: %s expires %s (in %d days; warning at %d, --tls_expiry_warn_days): make a new one "
        "and reload (docs/security.md, \"Rotation\")",
        what, Date(t), static_cast<int>(absl::ToDoubleHours(t - now) / 24),
        config_.expiry_warn_days);
  };
  warn("this node's certificate", info.not_after);
  warn("the cluster CA", info.ca_not_after);
}

std::shared_ptr<grpc::ServerCredentials> TlsIdentity::ServerCredentials() const {
  grpc::experimental::TlsServerCredentialsOptions opts(provider_);
  opts.watch_root_certs();
  opts.watch_identity_key_cert_pairs();
  opts.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  opts.set_certificate_verifier(server_verifier_);
  return grpc::experimental::TlsServerCredentials(opts);
}

std::shared_ptr<grpc::ChannelCredentials> TlsIdentity::ChannelCredentials() const {
  grpc::experimental::TlsChannelCredentialsOptions opts;
  opts.set_certificate_provider(provider_);
  opts.watch_root_certs();
  opts.watch_identity_key_cert_pairs();
  opts.set_verify_server_certs(true);
  // The verifier checks the name; no per-call host names here.
  opts.set_check_call_host(false);
  opts.set_certificate_verifier(client_verifier_);
  return grpc::experimental::TlsCredentials(opts);
}

void TlsIdentity::SetTargetNode(uint32_t node, grpc::ChannelArguments* args) {
  args->SetSslTargetNameOverride(NodeCertName(node));
}

bool CallerNamesNode(const grpc::AuthContext& auth, uint32_t node) {
  std::string want = NodeCertName(node);
  for (const char* prop : {GRPC_X509_SAN_PROPERTY_NAME, GRPC_PEER_DNS_PROPERTY_NAME}) {
    for (const auto& v : auth.FindPropertyValues(prop))
      if (std::string(v.data(), v.size()) == want) return true;
  }
  return false;
}

std::string CallerNames(const grpc::AuthContext& auth) {
  std::vector<std::string> names;
  for (const auto& v : auth.FindPropertyValues(GRPC_PEER_DNS_PROPERTY_NAME))
    names.emplace_back(v.data(), v.size());
  if (names.empty()) {
    for (const auto& v : auth.FindPropertyValues(GRPC_X509_SAN_PROPERTY_NAME))
      names.emplace_back(v.data(), v.size());
  }
  return names.empty() ? "no names" : absl::StrJoin(names, ", ");
}

}  // namespace tether
