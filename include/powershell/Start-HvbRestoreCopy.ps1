<#
.SYNOPSIS
    Boots a restore test's copy: imports the recovered files as a new VM, isolated, and starts it.
.DESCRIPTION
    Import-VM -Copy -GenerateNewId gives the copy a new id and its own files (a subfolder of the test's
    folder); Rename-VM gives it the test's name; Disconnect-VMNetworkAdapter takes every adapter off its
    switch before the first boot, so the copy can never meet the original's network. Then Start-VM.
    The original VM is not named anywhere in this script and cannot be touched by it.
.PARAMETER Folder
    The folder the recovery wrote (Start-HvbRestoreTest's).
.PARAMETER CopyName
    The copy's name: it starts with HvbRestoreTest- (facts.RESTORE_COPY_PREFIX), which no VM of the fleet has.
.OUTPUTS
    One JSON document: clock_utc; copy (id, name, state, uptime_seconds, path, network_connected, heartbeat);
    source_id (the id in the recovered configuration: the original's).
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $Folder,
    [Parameter(Mandatory)] [string] $CopyName
)
if (-not $CopyName.StartsWith('HvbRestoreTest-')) {
    throw [System.ArgumentException]::new("'$CopyName' is not a restore test's name (HvbRestoreTest-...).")
}
$config = Get-ChildItem -LiteralPath $Folder -Recurse -File -Include '*.vmcx', '*.xml' -ErrorAction SilentlyContinue | Select-Object -First 1
if (-not $config) {
    throw [System.Management.Automation.ItemNotFoundException]::new("No virtual machine configuration was found under '$Folder'.")
}
if (Get-VM -Name $CopyName -ErrorAction SilentlyContinue) {
    throw [System.IO.IOException]::new("A virtual machine named '$CopyName' already exists.")
}
$sourceId = Split-Path -Path $config.FullName -LeafBase
$importTo = Join-Path -Path $Folder -ChildPath 'Import'
$copy = Import-VM -Path $config.FullName -Copy -GenerateNewId -VirtualMachinePath $importTo -VhdDestinationPath (Join-Path -Path $importTo -ChildPath 'Virtual Hard Disks') -SnapshotFilePath $importTo -SmartPagingFilePath $importTo
Rename-VM -VM $copy -NewName $CopyName
Get-VMNetworkAdapter -VM $copy | Disconnect-VMNetworkAdapter
Start-VM -VM $copy
$copy = Get-VM -Id $copy.Id
@{
    clock_utc = (Get-Date).ToUniversalTime().ToString('o'); source_id = $sourceId
    copy = @{ id = "$($copy.Id)"; name = $copy.Name; state = "$($copy.State)"; uptime_seconds = [int64]$copy.Uptime.TotalSeconds; path = $copy.Path
              network_connected = @(Get-VMNetworkAdapter -VM $copy | Where-Object { $_.SwitchName }).Count -gt 0; heartbeat = '' }
}
