<#
.SYNOPSIS
    What a host-level backup of one VM will meet: the VM's facts, the host, the target, any running job.
.DESCRIPTION
    Read-only. Matches the VM by exact name (Get-VM -Name would expand wildcards), so every VM
    of that name is returned with its Id; the caller acts on the Id from then on.
    Enum values are sent as strings and times as ISO 8601 UTC, because ConvertTo-Json of
    Windows PowerShell 5.1 would send numbers and /Date()/.
.PARAMETER VMName
    The VM's name, matched exactly (case and all): a name with [ or * is a name, not a pattern.
.PARAMETER BackupTarget
    The backup target: a volume (E: or a volume path) or a network share (\\server\share), checked for
    existence and free space. A share is checked from this session: a WinRM logon cannot pass itself on to
    another computer (the second hop) unless the host is trusted for delegation, so a share this session cannot
    reach reads as missing. Its free space is the share's (Scripting.FileSystemObject reads it for \\server\share
    only), or null when it cannot be read.
.OUTPUTS
    One JSON document: host (computer_name, os_caption, os_version, culture, clock_utc); target (path,
    exists, free_bytes); wsb_job (the running job, or null); vms, every VM of that name, each with id,
    name, state, generation, uptime_seconds, checkpoint_type, guest_os, guest_volumes,
    integration_services, checkpoints and disks (read by hyperv_backup.rules.predict).
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $VMName,
    [Parameter(Mandatory)] [string] $BackupTarget
)
$now = (Get-Date).ToUniversalTime()
$os = Get-CimInstance -ClassName Win32_OperatingSystem
$vms = @(Get-VM | Where-Object { $_.Name -ceq $VMName })
$job = Get-WBJob
if ($BackupTarget.StartsWith('\\')) {
    $parts = $BackupTarget.TrimStart('\').Split('\')
    $free = $null
    try { $free = [int64](New-Object -ComObject Scripting.FileSystemObject).GetDrive("\\$($parts[0])\$($parts[1])").AvailableSpace } catch { }
    $target = @{ path = $BackupTarget; exists = (Test-Path -LiteralPath $BackupTarget); free_bytes = $free }
} else {
    $drive = Get-PSDrive -Name $BackupTarget.TrimEnd(':', '\') -PSProvider FileSystem -ErrorAction SilentlyContinue
    $target = @{ path = $BackupTarget; exists = [bool]$drive; free_bytes = $(if ($drive) { $drive.Free } else { 0 }) }
}
@{
    host = @{
        computer_name = $env:COMPUTERNAME; os_caption = $os.Caption; os_version = $os.Version
        culture = (Get-UICulture).Name; clock_utc = $now.ToString('o')
    }
    target = $target
    wsb_job = $(if ($job -and "$($job.JobState)" -eq 'Running') {
        @{ job_state = "$($job.JobState)"; operation = $job.CurrentOperation; start_time_utc = $job.StartTime.ToUniversalTime().ToString('o') }
    })
    vms = @(foreach ($vm in $vms) {
        $kvp = Get-CimInstance -Namespace root\virtualization\v2 -ClassName Msvm_KvpExchangeComponent -Filter "SystemName='$($vm.Id)'"
        $items = @{}
        foreach ($x in @($kvp.GuestIntrinsicExchangeItems) + @($kvp.GuestExchangeItems)) {
            if ($x) {
                $d = [xml]$x
                $items[($d.SelectSingleNode("//PROPERTY[@NAME='Name']/VALUE")).InnerText] = ($d.SelectSingleNode("//PROPERTY[@NAME='Data']/VALUE")).InnerText
            }
        }
        @{
            id = "$($vm.Id)"; name = $vm.Name; state = "$($vm.State)"; generation = $vm.Generation
            uptime_seconds = [int64]$vm.Uptime.TotalSeconds; checkpoint_type = "$($vm.CheckpointType)"
            guest_os = $items['OSName']; guest_volumes = $items['HyperVBackup.Volumes']
            integration_services = @(Get-VMIntegrationService -VM $vm | ForEach-Object {
                @{ name = $_.Name; id = $_.Id; enabled = $_.Enabled; primary_status = "$($_.PrimaryStatusDescription)" } })
            checkpoints = @(Get-VMSnapshot -VM $vm | ForEach-Object {
                @{ id = "$($_.Id)"; name = $_.Name; type = "$($_.SnapshotType)"; created_utc = $_.CreationTime.ToUniversalTime().ToString('o') } })
            disks = @(Get-VMHardDiskDrive -VM $vm | Get-VHD | ForEach-Object {
                @{ path = $_.Path; vhd_type = "$($_.VhdType)"; parent_path = $_.ParentPath; size_bytes = $_.FileSize } })
        }
    })
}
