/*
 * The part of VMware's VixDiskLib C ABI that HyperSDK uses: types, struct layouts and the
 * signatures of the functions looked up with dlsym. Written from the public descriptions
 * (VMware's VDDK programming guide, nbdkit's vddk plugin notes). VDDK's own header is not
 * redistributable, so the agent carries this one; the fake library of the tests
 * (test/fakevddk) is compiled against the same file, the way a real client and the real
 * library share vixDiskLib.h.
 *
 * Facts relied on:
 *   - VixError is 64 bits; the low 16 bits are the error code (VIX_ERROR_CODE).
 *   - Sectors are always 512 bytes in the API (Read/QueryAllocatedBlocks take sectors).
 *   - VixDiskLibInfo grew logicalSectorSize/physicalSectorSize in 7.0: do not read them
 *     from an older library (its struct ends before them).
 *   - QueryAllocatedBlocks/FreeBlockList exist since 6.7; chunk size >= 128 sectors, at
 *     most 512 Ki chunks per call, start and length multiples of the chunk size.
 */
#ifndef HYPERSDK_VIXDISKLIB_H
#define HYPERSDK_VIXDISKLIB_H

#include <stdarg.h>
#include <stdint.h>

typedef uint64_t VixError;

#define VIX_OK 0
#define VIX_E_FAIL 1
#define VIX_E_INVALID_ARG 3
#define VIX_E_FILE_NOT_FOUND 4
#define VIX_E_OBJECT_IS_BUSY 5
#define VIX_E_NOT_SUPPORTED 6
#define VIX_E_AUTHENTICATION_FAIL 35
#define VIX_E_HOST_CONNECTION_LOST 36
#define VIX_ERROR_CODE(e) ((e) & 0xFFFF)

#define VIXDISKLIB_SECTOR_SIZE 512
#define VIXDISKLIB_FLAG_OPEN_READ_ONLY 4
#define VIXDISKLIB_MIN_CHUNK_SIZE 128
#define VIXDISKLIB_MAX_CHUNK_NUMBER (512 * 1024)

typedef void *VixDiskLibConnection;
typedef void *VixDiskLibHandle;

/* printf-style callbacks for the library's log, warning and panic messages. */
typedef void VixDiskLibGenericLogFunc(const char *fmt, va_list args);

enum VixDiskLibCredType {
  VIXDISKLIB_CRED_UID = 1,
  VIXDISKLIB_CRED_SESSIONID = 2,
  VIXDISKLIB_CRED_TICKETID = 3,
  VIXDISKLIB_CRED_SSPI = 4,
  VIXDISKLIB_CRED_UNKNOWN = 256
};

enum VixDiskLibSpecType {
  VIXDISKLIB_SPEC_VMX = 0,
  VIXDISKLIB_SPEC_VSTORAGE_OBJECT = 1,
  VIXDISKLIB_SPEC_UNKNOWN = 2
};

typedef struct VixDiskLibConnectParams {
  char *vmxSpec;      /* "moref=vm-NN" */
  char *serverName;   /* vCenter or ESXi host */
  char *thumbPrint;   /* SHA-1 of the server certificate, colon-separated hex */
  long reserved1;
  enum VixDiskLibCredType credType;
  union {
    struct { char *userName; char *password; } uid;
    struct { char *cookie; char *userName; char *key; } sessionId;
    void *reserved2;
  } creds;
  uint32_t port;
  uint32_t nfcHostPort;
  char *reserved3;
  char reserved4[8];
  void *reserved5;
  union {
    struct { char *id; char *datastoreMoRef; char *ssId; } vStorageObjSpec;
  } spec;
  enum VixDiskLibSpecType specType;
} VixDiskLibConnectParams;

typedef struct VixDiskLibGeometry {
  uint32_t cylinders;
  uint32_t heads;
  uint32_t sectors;
} VixDiskLibGeometry;

typedef struct VixDiskLibInfo {
  VixDiskLibGeometry biosGeo;
  VixDiskLibGeometry physGeo;
  uint64_t capacity;            /* in 512-byte sectors */
  int adapterType;
  int numLinks;
  char *parentFileNameHint;
  char *uuid;
  uint32_t logicalSectorSize;   /* 7.0 and later only */
  uint32_t physicalSectorSize;  /* 7.0 and later only */
} VixDiskLibInfo;

typedef struct VixDiskLibBlock {
  uint64_t offset;  /* sectors */
  uint64_t length;  /* sectors */
} VixDiskLibBlock;

typedef struct VixDiskLibBlockList {
  uint32_t numBlocks;
  VixDiskLibBlock blocks[1];
} VixDiskLibBlockList;

/* The functions (the names dlsym looks up). */
typedef VixError (*VixDiskLib_InitEx_t)(uint32_t major, uint32_t minor, VixDiskLibGenericLogFunc *log,
                                        VixDiskLibGenericLogFunc *warn, VixDiskLibGenericLogFunc *panic,
                                        const char *libDir, const char *configFile);
typedef void (*VixDiskLib_Exit_t)(void);
typedef char *(*VixDiskLib_GetErrorText_t)(VixError err, const char *locale);
typedef void (*VixDiskLib_FreeErrorText_t)(char *text);
typedef VixDiskLibConnectParams *(*VixDiskLib_AllocateConnectParams_t)(void);
typedef void (*VixDiskLib_FreeConnectParams_t)(VixDiskLibConnectParams *params);
typedef VixError (*VixDiskLib_ConnectEx_t)(const VixDiskLibConnectParams *params, char readOnly,
                                           const char *snapshotRef, const char *transportModes,
                                           VixDiskLibConnection *connection);
typedef VixError (*VixDiskLib_Disconnect_t)(VixDiskLibConnection connection);
typedef VixError (*VixDiskLib_Open_t)(const VixDiskLibConnection connection, const char *path, uint32_t flags,
                                      VixDiskLibHandle *handle);
typedef VixError (*VixDiskLib_Close_t)(VixDiskLibHandle handle);
typedef const char *(*VixDiskLib_GetTransportMode_t)(VixDiskLibHandle handle);
typedef VixError (*VixDiskLib_GetInfo_t)(VixDiskLibHandle handle, VixDiskLibInfo **info);
typedef void (*VixDiskLib_FreeInfo_t)(VixDiskLibInfo *info);
typedef VixError (*VixDiskLib_Read_t)(VixDiskLibHandle handle, uint64_t startSector, uint64_t numSectors,
                                      uint8_t *buf);
typedef VixError (*VixDiskLib_QueryAllocatedBlocks_t)(VixDiskLibHandle handle, uint64_t startSector,
                                                      uint64_t numSectors, uint64_t chunkSize,
                                                      VixDiskLibBlockList **blockList);
typedef VixError (*VixDiskLib_FreeBlockList_t)(VixDiskLibBlockList *blockList);

#endif
